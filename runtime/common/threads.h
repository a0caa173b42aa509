// How many threads tessera's kernels use. Both OpenMP loops and OpenBLAS follow
// one setting; by default it is the number of cores this process may run on
// (sched_getaffinity), divided by the ranks sharing the node under mpirun.
#pragma once

namespace tessera {

int available_cores();
// Sets OpenMP and OpenBLAS thread counts; n <= 0 means available_cores() / local ranks.
void set_num_threads(int n);
int num_threads();
// Ranks of this job on this machine (mpirun's or tessera launch's count; 1 alone).
int local_ranks();

}  // namespace tessera
