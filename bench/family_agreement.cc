// Agreement of each decoder family with transformers, from the committed
// fixtures (scripts/gen_families.py: transformers 5.24's logits, loss and
// every gradient on a tiny model with real-spread weights). One JSON line per
// family: the relative error of the logits, of the loss and the largest of any
// parameter's gradient — and, as the baseline in the same run, the logits'
// error of the same model with the family's own convention left out (RoPE
// scaling, the window, q/k norms, the inverse-layer scale, Gemma's offset
// norms...), which the tests' tolerance must be far below.
//
//   build/bench/family_agreement
#include <cmath>
#include <cstring>
#include <functional>

#include "bench/common.h"
#include "runtime/autograd/ops.h"
#include "runtime/autograd/tape.h"
#include "runtime/io/hf.h"
#include "runtime/io/safetensors.h"

using namespace tessera;

namespace {

double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::fabs(double(a[i]) - double(b[i])));
    den = std::max(den, std::fabs(double(b[i])));
  }
  return num / (den + 1e-30);
}

std::vector<int32_t> ints(const io::SafetensorsFile& f, const std::string& name) {
  const io::TensorInfo* t = f.find(name);
  std::vector<int32_t> v((t->end - t->begin) / 4);
  std::memcpy(v.data(), f.bytes(*t), v.size() * 4);
  return v;
}

}  // namespace

int main() {
  const std::string root = std::string(TESSERA_SOURCE_DIR) + "/tests/fixtures/families/";
  const std::vector<std::pair<std::string, std::function<void(nn::DecoderSpec&)>>> cases = {
      {"llama_headdim_bias_llama3", [](nn::DecoderSpec& s) { s.rope_scaling.type = "default"; }},
      {"llama_linear_rope", [](nn::DecoderSpec& s) { s.rope_scaling.factor = 1.0f; }},
      {"mistral_window", [](nn::DecoderSpec& s) { s.sliding_window = 0; }},
      {"qwen2_bias_window", [](nn::DecoderSpec& s) { s.sliding_window = 0; }},
      {"qwen3_qknorm", [](nn::DecoderSpec& s) { s.rope_theta *= 2; }},
      {"phi3_fused", [](nn::DecoderSpec& s) { s.sliding_window = 0; }},
      {"phi3_partial_rotary", [](nn::DecoderSpec& s) { s.partial_rotary_factor = 1.0f; }},
      {"gemma",
       [](nn::DecoderSpec& s) { s.flavor = nn::Flavor::Llama; }},  // no offset, scale, GeGLU
      {"gpt2_inverse_layer", [](nn::DecoderSpec& s) { s.scale_attn_by_inverse_layer_idx = false; }},
  };
  for (const auto& [name, break_it] : cases) {
    const std::string dir = root + name;
    auto golden = io::SafetensorsFile::open(dir + "/golden.safetensors");
    auto model = io::load_hf_decoder(dir + "/model");
    const std::vector<int32_t> ids = ints(*golden, "input_ids"), tgt = ints(*golden, "targets");
    model->params().zero_grad();
    autograd::Tape tape;
    Tensor logits = model->forward(ids, 2, 7);
    Tensor loss = ops::cross_entropy(logits, tgt);
    const double want_loss = golden->load_f32("loss").item();
    const double logit_err = rel_err(logits.to_vector(), golden->load_f32("logits").to_vector());
    const double loss_err = std::fabs(loss.item() - want_loss) / want_loss;
    tape.backward(loss);
    double grad_err = 0;
    int grads = 0;
    for (const auto& t : golden->tensors()) {
      if (t.name.rfind("grad.", 0) != 0) continue;
      const Tensor* p = model->params().find(t.name.substr(5));
      grad_err =
          std::max(grad_err, rel_err(p->grad().to_vector(), golden->load_f32(t).to_vector()));
      ++grads;
    }
    nn::DecoderSpec s = io::read_hf_config(dir + "/model");
    break_it(s);
    Rng rng(0);
    nn::Decoder wrong(s, rng);
    io::load_hf_weights(dir + "/model", wrong);
    const double convention_err =
        rel_err(wrong.forward(ids, 2, 7).to_vector(), golden->load_f32("logits").to_vector());
    bench::emit({{"bench", "family_agreement"},
                 {"family", name},
                 {"logits_rel_err", logit_err},
                 {"loss_rel_err", loss_err},
                 {"max_grad_rel_err", grad_err},
                 {"gradients", grads},
                 {"baseline_convention_dropped_logits_rel_err", convention_err}});
  }
  return 0;
}
