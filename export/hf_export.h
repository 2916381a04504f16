// Merged Hugging Face export: base + adapter merged in f32 and written as a folder that
// transformers' AutoModelForCausalLM / AutoTokenizer load as they are:
//
//   model.safetensors        every weight under its transformers name (model.embed_tokens.weight,
//                            model.layers.N.self_attn.q_proj.weight, ..., model.norm.weight,
//                            lm_head.weight unless tied), f32 or bf16; metadata format "pt"
//   config.json              export/hf_config.h (the source folder's own, or synthesized)
//   generation_config.json   the source folder's, else bos / eos / pad ids
//   tokenizer files          copied from a source folder, or synthesized from the GGUF's
//                            tokenizer.* keys (export/hf_tokenizer.h) and checked by reading them
//                            back with loom's tokenizer.json reader
//
// Weights: each projection with an adapter of `lora` is merged (lora/merge.h
// merged_weight_values: W + s B A, DoRA's row norm included) from the weight the model holds --
// so a quantized GGUF base is dequantized, and a QLoRA base is its NF4 values; everything else is
// the model's tensor as f32. A GGUF-loaded llama holds q/k in llama.cpp's row order: those weight
// rows and biases are put back into Hugging Face order (export/qk_rows.h). Biases the
// transformers class has and the model lacks are written as zeros.
//
// Everything that can be refused is refused before anything is written; the folder is then
// written through a StagingDir, so a failure leaves nothing under out_dir.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "autograd/tensor.h"
#include "export/export_dir.h"
#include "lora/lora_model.h"
#include "lora/merge.h"

namespace loom {

struct HfExportOptions {
  MergeDType dtype = MergeDType::F32;  // of model.safetensors (the merge itself is f32)
  bool replace_existing = false;       // replace an existing output directory
};

// One tensor of model.safetensors; values() computes its f32 values when called.
struct HfTensor {
  std::string name;
  Shape shape;
  std::function<std::vector<float>()> values;
};

// The tensors of the merged model, in the order written. `lora` may be null (the base as it
// is). Throws when a projection carries an adapter that is neither lora's nor merged, or has a
// bias transformers' class has no parameter for.
std::vector<HfTensor> hf_model_tensors(const LlamaModel& model, const LoraModel* lora);

// Writes the folder (see above). `model` is the model loaded from source_path (a .gguf file or
// a Hugging Face folder); `lora` may be null and may be merged already.
ExportReport export_hf_model(const LlamaModel& model, const LoraModel* lora,
                             const std::string& source_path, const std::string& out_dir,
                             const HfExportOptions& options = {});

}  // namespace loom
