// Exports for llama.cpp: a merged model GGUF and a LoRA adapter GGUF (`llama-cli --lora`).
//
// Merged model (export_merged_gguf): every projection with a LoRA/DoRA adapter is merged in f32
// (lora/merge.h merged_weight_values: W + s B A, DoRA's row norm included) and stored as the
// chosen type; every other tensor is taken from the loaded model (bytes copied when it already
// has the chosen type, else re-quantized from its f32 values). The weights are those loom runs:
// a QLoRA base converted to NF4 is exported from its NF4 values, not from the original file.
// Types follow llama-quantize with a uniform mix:
//   - 1-D tensors (norms, biases, rope_freqs) stay f32, as llama.cpp's converter writes them;
//   - the output projection -- token_embd when the embeddings are tied -- takes llama.cpp's rule:
//     q8_0 when the type is q8_0 or its rows are not a multiple of 256, else q6_k;
//   - every other 2-D weight takes the chosen type; rows that do not fit its block fall back as
//     llama-quantize does (q6_k -> q8_0), except q4_k -> q4_1 where llama.cpp uses q5_0, which
//     loom cannot write (SmolLM2's 576-wide rows are such a case); anything still not fitting
//     becomes f16. Each fallback is listed in GgufExportResult::notes.
// Metadata: everything of the source GGUF (general.*, <arch>.*, every tokenizer.* key including
// tokenizer.chat_template) is carried over in its order; general.file_type and
// general.quantization_version are set for the new types; split.* and quantize.imatrix.* keys
// (which describe the source file) are dropped. Q/K rows (and biases) are written in llama.cpp's
// order: a model loaded from GGUF already holds them so, a model loaded from a Hugging Face
// folder is permuted on the way out. Such a model is exported either with a GGUF file of the same
// model as `source` (its metadata and tokenizer are carried over), or from its folder itself
// (export_merged_gguf_from_hf): the metadata is then what llama.cpp's convert_hf_to_gguf.py
// writes for that folder (export/gguf_hf_metadata.h: hyper-parameters from config.json, a
// byte-level BPE tokenizer from tokenizer.json with its pre-tokenizer named as llama.cpp names
// it, Llama 3's rope scaling as a rope_freqs.weight tensor), general.name the folder's name
// unless given. Folders without tokenizer.json, with a SentencePiece-style one (Llama 2,
// Mistral) or with a pre-tokenizer llama.cpp has no name for are refused, naming why.
//
// LoRA adapter (export_gguf_adapter): the keys llama.cpp's adapter loader reads --
// general.type "adapter", adapter.type "lora", adapter.lora.alpha (f32), general.architecture
// -- and per adapted projection `<base tensor>.lora_a` [r, in] (GGUF ne [in, r]) and
// `.lora_b` [out, r] (ne [r, out]), as llama.cpp's convert_lora_to_gguf.py writes them. llama.cpp
// scales every module by alpha / r (r read from lora_b), one alpha per file; the file's alpha is
// the trained scale times the default rank (alpha, or alpha * sqrt(r) with rsLoRA), and any
// module whose trained scale differs (alpha_pattern, rank_pattern with rsLoRA) has the factor
// folded into its lora_b. q/k lora_b rows are written in llama.cpp's order. Tensor types: f32,
// f16, bf16 or q8_0; a q8_0 tensor whose rows (ne[0]: in for lora_a, r for lora_b) are not a
// multiple of 32 is written f16, as the converter does. DoRA adapters are refused: llama.cpp has
// no magnitude vector to apply.
//
// Every file is written through a temporary file, flushed and renamed (export/gguf_writer.h).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "autograd/dtype.h"

namespace loom {

class GgufFile;
class GgufWriter;
class LlamaModel;
class LoraModel;
struct ModelConfig;

struct GgufExportResult {
  std::string path;
  uint64_t bytes = 0;
  int64_t tensors = 0;
  int64_t merged_modules = 0;  // merged model: projections that had an adapter
  // Per stored dtype, how many tensors ("q8_0" -> 1, "f32" -> 61, ...), in dtype order.
  std::vector<std::pair<std::string, int64_t>> type_counts;
  // What the user should know: fallbacks, folded scales, the file's alpha.
  std::vector<std::string> notes;
};

// ---- merged model ---------------------------------------------------------------------------

// The types a merged GGUF can be written in: f32, f16, bf16, q8_0, q4_0, q4_k, q6_k.
const std::vector<DType>& merged_gguf_types();
// Parses one of them by name; throws listing them.
DType parse_merged_gguf_type(std::string_view name);

struct MergedGgufOptions {
  DType type = DType::F16;
  std::string name;  // general.name; empty keeps the source's
};

// The stored type llama-quantize's rules (above) give a tensor of `shape` (PyTorch order)
// named `name` when the model is exported as `type`; `tied`: the model has no output.weight.
DType merged_tensor_type(const std::string& name, const std::vector<int64_t>& shape, DType type,
                         bool tied);

// Writes base + adapter merged to `out_path`. `model` must be the model loaded from
// `source` (checked: architecture, and every tensor's name and shape); `lora` may be null (the
// base alone, re-typed) and may be merged already. Throws before writing anything on a
// mismatch, and leaves no file under out_path on any failure.
GgufExportResult export_merged_gguf(const LlamaModel& model, const LoraModel* lora,
                                    const GgufFile& source, const std::string& out_path,
                                    const MergedGgufOptions& options = {});
// From the Hugging Face folder the model was loaded from (see above); `lora` as above.
GgufExportResult export_merged_gguf_from_hf(const LlamaModel& model, const LoraModel* lora,
                                            const std::string& folder, const std::string& out_path,
                                            const MergedGgufOptions& options = {});
// Throws what export_merged_gguf_from_hf would throw about the folder's tokenizer (none, not
// byte-level BPE, a pre-tokenizer llama.cpp has no name for, more tokens than the model), so
// that a training run can refuse such an export before it starts.
void check_merged_gguf_from_hf(const ModelConfig& config, const std::string& folder);
// The same with the path the base was loaded from: a .gguf file or a Hugging Face folder.
GgufExportResult export_merged_gguf(const LlamaModel& model, const LoraModel* lora,
                                    const std::string& source_path, const std::string& out_path,
                                    const MergedGgufOptions& options = {});

// ---- LoRA adapter ---------------------------------------------------------------------------

// f32, f16, bf16, q8_0.
const std::vector<DType>& gguf_adapter_types();
DType parse_gguf_adapter_type(std::string_view name);

struct GgufAdapterOptions {
  DType type = DType::F32;
  std::string name;        // general.name; empty: none
  std::string base_model;  // recorded as loom.lora.base_model when given
};

// The value written as adapter.lora.alpha for this adapter (see above).
// Why a GGUF adapter cannot hold an LM head adapter of a model with tied embeddings
// (SmolLM2): llama.cpp's model has no output.weight for the adapter to attach to.
std::string gguf_tied_head_adapter_reason();

double gguf_adapter_alpha(const LoraModel& lora);

// Writes `lora` (attached to `model`) as a llama.cpp LoRA adapter. Throws for DoRA.
GgufExportResult export_gguf_adapter(const LlamaModel& model, const LoraModel& lora,
                                     const std::string& out_path,
                                     const GgufAdapterOptions& options = {});

}  // namespace loom
