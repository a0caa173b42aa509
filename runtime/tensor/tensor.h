// Tensor: an fp32 n-d array on a device, sharing its storage between views.
// Contiguous row-major data (strides are derived from the shape); a device tag
// routes each op to kernels::cpu or kernels::cuda at one dispatch point.
// A tensor may require a gradient; its gradient is another Tensor allocated on
// first use by the autograd tape (runtime/autograd).
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace tessera {

enum class Device : uint8_t { CPU = 0, CUDA = 1 };
const char* device_name(Device d);

using Shape = std::vector<int64_t>;
int64_t shape_numel(const Shape& s);
std::string shape_str(const Shape& s);

// Raw buffer. CPU memory comes from a size-keyed cache so that a training step
// reuses the buffers of the previous one instead of faulting in fresh pages.
struct Storage {
  float* data = nullptr;
  size_t numel = 0;
  Device device = Device::CPU;
  static std::shared_ptr<Storage> allocate(size_t numel, Device device);
  ~Storage();
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

struct TensorImpl;

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, Device device = Device::CPU);
  static Tensor full(const Shape& shape, float value, Device device = Device::CPU);
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape);

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  int ndim() const;
  int64_t size(int dim) const;  // negative dims count from the end
  int64_t numel() const;
  Device device() const;

  float* data();
  const float* data() const;
  float item() const;  // the single value of a one-element CPU tensor
  std::vector<float> to_vector() const;

  // Shares storage; the element count must match. One dim may be -1.
  Tensor view(const Shape& shape) const;
  Tensor clone() const;  // new storage, no grad, no requires_grad
  Tensor to(Device device) const;
  void zero_();
  void fill_(float value);
  void copy_from(const Tensor& src);  // same numel

  bool requires_grad() const;
  Tensor& set_requires_grad(bool on);
  // The accumulated gradient (undefined until backward reaches this tensor).
  Tensor grad() const;
  // Gradient buffer, allocated and zeroed on first use.
  Tensor& ensure_grad() const;
  void clear_grad() const;

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }
  std::string desc() const;  // "[2, 3] cpu"

 private:
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<TensorImpl> impl_;
  friend struct TensorImpl;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  size_t offset = 0;
  Shape shape;
  bool requires_grad = false;
  Tensor grad;
};

}  // namespace tessera
