#!/usr/bin/env python3
"""Generates tests/fixtures/mbc/mbc.safetensors for tests/routing/cluster_test.cc
with mttl's model-based clustering as it runs in mttl (SVDEmbeddingTransform
then MBCWithCosSimTransform), written out with numpy and scikit-learn:

  v_e  = parameters_to_vector(expert weights)  (per module lora_A then lora_B)
  thr  = np.quantile(|v_e|, 0.8); v_e[|v_e| <= thr] = 0
  emb  = TruncatedSVD(n_components, algorithm="randomized", n_iter=5,
                      n_oversamples=10, random_state=42, tol=0).fit_transform(V)
  emb /= ||emb||_2 per row
  C    = cosine_similarity(emb, emb)
  KMeans(k, init="k-means++", n_init=10, random_state=42).fit(C).labels_

Experts: N = 15 in 3 groups of 5, two modules (lora_A [4, 16], lora_B [12, 4]
and lora_A [4, 12], lora_B [9, 4]); within a group every expert starts from
the group's own factors plus noise, so the partition is unambiguous but not
trivial (noise 0.35 of the signal). D = 196 values, chosen so that
0.8·(D − 1) is a whole number: the quantile lands on an element, and
zeroing |v| < thr instead of <= thr changes the result.

Tensors: A.<e>.<m>, B.<e>.<m> (m = 0, 1); threshold [N]; embeddings [N, c];
cosine [N, N]; labels [N] (float); meta [3] = N, k, components.

  python3 -m venv /tmp/venv && /tmp/venv/bin/pip install numpy scikit-learn torch safetensors
  /tmp/venv/bin/python scripts/gen_mbc_fixture.py
"""
import os

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.cluster import KMeans
from sklearn.decomposition import TruncatedSVD
from sklearn.metrics.pairwise import cosine_similarity

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "mbc")
SHAPES = [(4, 16, 12), (4, 12, 9)]  # (r, in, out) per module
N, K, GROUPS = 15, 3, 3


def main():
    rng = np.random.default_rng(7)
    protos = [[(rng.normal(size=(r, i)), rng.normal(size=(o, r))) for r, i, o in SHAPES]
              for _ in range(GROUPS)]
    t, rows = {}, []
    for e in range(N):
        g = e % GROUPS
        vec = []
        for m, ((r, i, o), (A0, B0)) in enumerate(zip(SHAPES, protos[g])):
            A = (A0 + 0.35 * rng.normal(size=A0.shape)).astype(np.float32)
            B = (B0 + 0.35 * rng.normal(size=B0.shape)).astype(np.float32)
            t[f"A.{e}.{m}"] = torch.from_numpy(A)
            t[f"B.{e}.{m}"] = torch.from_numpy(B)
            vec += [A.reshape(-1), B.reshape(-1)]
        rows.append(np.concatenate(vec))
    V = np.stack(rows).astype(np.float32)
    D = V.shape[1]
    assert abs(0.8 * (D - 1) - round(0.8 * (D - 1))) < 1e-9, D
    thr = np.quantile(np.abs(V), 0.8, axis=1)
    V[np.abs(V) <= thr.reshape(-1, 1)] = 0.0
    comps = min(64, N - 1)
    svd = TruncatedSVD(n_components=comps, algorithm="randomized", n_iter=5, n_oversamples=10,
                       power_iteration_normalizer="auto", random_state=42, tol=0.0)
    emb = svd.fit_transform(V)
    emb = emb / np.linalg.norm(emb, 2, axis=1)[:, None]
    C = cosine_similarity(emb, emb)
    labels = KMeans(n_clusters=K, init="k-means++", n_init=10, random_state=42).fit(C).labels_
    print("D", D, "labels", labels.tolist())
    t.update({"threshold": torch.tensor(thr, dtype=torch.float32),
              "embeddings": torch.tensor(emb, dtype=torch.float32),
              "cosine": torch.tensor(C, dtype=torch.float32),
              "labels": torch.tensor(labels, dtype=torch.float32),
              "meta": torch.tensor([N, K, comps], dtype=torch.float32)})
    os.makedirs(ROOT, exist_ok=True)
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(ROOT, "mbc.safetensors"))


if __name__ == "__main__":
    main()
