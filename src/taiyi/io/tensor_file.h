// Reading and writing named-tensor files: safetensors and PyTorch checkpoints.
//
// Both readers return a TensorMap (name -> Tensor, sorted by name). Tensors read
// from a safetensors file, or from a stored (uncompressed) entry of a PyTorch
// zip, are zero-copy views into the mmapped file; the mapping stays alive as
// long as any of its tensors does. Every malformed or hostile input throws
// taiyi::Error with a message that starts with the file path and says what is
// wrong; nothing in a file is ever executed.
//
//   TensorMap w = read_tensor_file("unet/diffusion_pytorch_model.safetensors");
//   Tensor conv = w.at("conv_in.weight");   // f32/f16/bf16 as stored
#pragma once

#include <map>
#include <string>

#include "taiyi/tensor/tensor.h"

namespace taiyi::io {

using TensorMap = std::map<std::string, Tensor>;

// safetensors (https://github.com/huggingface/safetensors, format spec in its README).
TensorMap read_safetensors(const std::string& path);
// The header's `__metadata__` map (empty if absent), validated like read_safetensors does.
std::map<std::string, std::string> read_safetensors_metadata(const std::string& path);
// Writes contiguous copies of `tensors`, header `__metadata__` = metadata.
void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// torch.save zip archives (.bin, .pt, .ckpt) holding a state dict, read with a
// restricted unpickler (see pickle.h).
TensorMap read_torch_checkpoint(const std::string& path);

// Either of the above, chosen by the file's content (zip magic vs safetensors header).
TensorMap read_tensor_file(const std::string& path);

}  // namespace taiyi::io
