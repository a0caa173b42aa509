#include "runtime/tensor/tensor.h"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "runtime/common/error.h"
#include "runtime/kernels/cuda/device.h"

namespace tessera {

const char* device_name(Device d) {
  return d == Device::CPU ? "cpu" : "cuda";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    TESSERA_CHECK(d >= 0, "negative dimension in ", shape_str(s));
    n *= d;
  }
  return n;
}

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

namespace {

// Exact-size cache of CPU buffers. Training steps allocate the same sizes
// every step, so after the first step almost every allocation is a hit.
class CpuCache {
 public:
  float* get(size_t numel) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(numel);
      if (it != free_.end() && !it->second.empty()) {
        float* p = it->second.back();
        it->second.pop_back();
        return p;
      }
    }
    size_t bytes = std::max<size_t>(64, (numel * sizeof(float) + 63) / 64 * 64);
    void* p = std::aligned_alloc(64, bytes);
    if (!p) throw Error(str("out of memory allocating ", numel * sizeof(float), " bytes"));
    return static_cast<float*>(p);
  }
  void put(float* p, size_t numel) {
    std::lock_guard<std::mutex> lock(mu_);
    free_[numel].push_back(p);
  }
  void release() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [n, v] : free_)
      for (float* p : v) std::free(p);
    free_.clear();
  }
  ~CpuCache() { release(); }

 private:
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<float*>> free_;
};

CpuCache& cpu_cache() {
  static CpuCache* cache = new CpuCache();  // leaked on purpose: outlives static tensors
  return *cache;
}

}  // namespace

std::shared_ptr<Storage> Storage::allocate(size_t numel, Device device) {
  auto s = std::make_shared<Storage>();
  s->numel = numel;
  s->device = device;
  if (device == Device::CPU) {
    s->data = cpu_cache().get(numel);
  } else {
    s->data = static_cast<float*>(cuda::device_malloc(numel * sizeof(float)));
  }
  return s;
}

Storage::~Storage() {
  if (!data) return;
  if (device == Device::CPU)
    cpu_cache().put(data, numel);
  else
    cuda::device_free(data);
}

Tensor Tensor::empty(const Shape& shape, Device device) {
  auto impl = std::make_shared<TensorImpl>();
  impl->shape = shape;
  impl->storage = Storage::allocate(static_cast<size_t>(shape_numel(shape)), device);
  return Tensor(impl);
}

Tensor Tensor::zeros(const Shape& shape, Device device) {
  Tensor t = empty(shape, device);
  t.zero_();
  return t;
}

Tensor Tensor::full(const Shape& shape, float value, Device device) {
  Tensor t = empty(shape, Device::CPU);
  t.fill_(value);
  return device == Device::CPU ? t : t.to(device);
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape))
    throw Error(
        str("from_vector: ", values.size(), " values do not fill shape ", shape_str(shape)));
  Tensor t = empty(shape);
  if (!values.empty()) std::memcpy(t.data(), values.data(), values.size() * sizeof(float));
  return t;
}

const Shape& Tensor::shape() const {
  TESSERA_CHECK(impl_, "undefined tensor");
  return impl_->shape;
}
int Tensor::ndim() const {
  return static_cast<int>(shape().size());
}
int64_t Tensor::size(int dim) const {
  int n = ndim();
  int d = dim < 0 ? dim + n : dim;
  TESSERA_CHECK(d >= 0 && d < n, "dim ", dim, " out of range for ", shape_str(shape()));
  return impl_->shape[d];
}
int64_t Tensor::numel() const {
  return shape_numel(shape());
}
Device Tensor::device() const {
  TESSERA_CHECK(impl_, "undefined tensor");
  return impl_->storage->device;
}
float* Tensor::data() {
  TESSERA_CHECK(impl_, "undefined tensor");
  return impl_->storage->data + impl_->offset;
}
const float* Tensor::data() const {
  TESSERA_CHECK(impl_, "undefined tensor");
  return impl_->storage->data + impl_->offset;
}
float Tensor::item() const {
  TESSERA_CHECK(numel() == 1, "item() on tensor of shape ", shape_str(shape()));
  if (device() != Device::CPU) return to(Device::CPU).item();
  return *data();
}
std::vector<float> Tensor::to_vector() const {
  if (device() != Device::CPU) return to(Device::CPU).to_vector();
  return std::vector<float>(data(), data() + numel());
}

Tensor Tensor::view(const Shape& new_shape) const {
  Shape s = new_shape;
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      TESSERA_CHECK(infer < 0, "two -1 dims in view ", shape_str(new_shape));
      infer = static_cast<int>(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    TESSERA_CHECK(known > 0 && numel() % known == 0, "cannot view ", shape_str(shape()), " as ",
                  shape_str(new_shape));
    s[infer] = numel() / known;
  }
  TESSERA_CHECK(shape_numel(s) == numel(), "cannot view ", shape_str(shape()), " as ",
                shape_str(new_shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = impl_->storage;
  impl->offset = impl_->offset;
  impl->shape = s;
  return Tensor(impl);
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape(), device());
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(Device dst) const {
  if (dst == device()) return *this;
  Tensor t = empty(shape(), dst);
  size_t bytes = static_cast<size_t>(numel()) * sizeof(float);
  if (dst == Device::CUDA)
    cuda::copy_to_device(t.data(), data(), bytes);
  else
    cuda::copy_to_host(t.data(), data(), bytes);
  return t;
}

void Tensor::zero_() {
  if (device() == Device::CPU)
    std::memset(data(), 0, static_cast<size_t>(numel()) * sizeof(float));
  else
    cuda::device_memset_zero(data(), static_cast<size_t>(numel()) * sizeof(float));
}

void Tensor::fill_(float value) {
  TESSERA_CHECK(device() == Device::CPU, "fill_ on ", device_name(device()));
  float* p = data();
  int64_t n = numel();
  for (int64_t i = 0; i < n; ++i) p[i] = value;
}

void Tensor::copy_from(const Tensor& src) {
  TESSERA_CHECK(src.numel() == numel(), "copy_from: ", shape_str(src.shape()), " into ",
                shape_str(shape()));
  size_t bytes = static_cast<size_t>(numel()) * sizeof(float);
  if (bytes == 0) return;
  if (device() == Device::CPU && src.device() == Device::CPU)
    std::memcpy(data(), src.data(), bytes);
  else if (device() == Device::CUDA && src.device() == Device::CPU)
    cuda::copy_to_device(data(), src.data(), bytes);
  else if (device() == Device::CPU && src.device() == Device::CUDA)
    cuda::copy_to_host(data(), src.data(), bytes);
  else
    cuda::copy_device_to_device(data(), src.data(), bytes);
}

bool Tensor::requires_grad() const {
  return impl_ && impl_->requires_grad;
}
Tensor& Tensor::set_requires_grad(bool on) {
  TESSERA_CHECK(impl_, "undefined tensor");
  impl_->requires_grad = on;
  return *this;
}
Tensor Tensor::grad() const {
  TESSERA_CHECK(impl_, "undefined tensor");
  return impl_->grad;
}
Tensor& Tensor::ensure_grad() const {
  TESSERA_CHECK(impl_, "undefined tensor");
  if (!impl_->grad.defined()) impl_->grad = zeros(shape(), device());
  return impl_->grad;
}
void Tensor::clear_grad() const {
  if (impl_) impl_->grad = Tensor();
}

std::string Tensor::desc() const {
  if (!impl_) return "<undefined>";
  return shape_str(shape()) + " " + device_name(device());
}

}  // namespace tessera
