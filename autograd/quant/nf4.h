// NF4 (QLoRA NormalFloat4) storage layout, loom's own, for a flat run of n weights
// (n a multiple of 64; a weight matrix [rows x cols] is flattened row-major):
//
//   [codes       : n/2 bytes   ] two 4-bit code indices per byte, element 2i in the HIGH nibble,
//                                 element 2i+1 in the LOW nibble (bitsandbytes' order)
//   [absmax_q    : n/64 bytes  ] per 64-block absmax, double-quantized: int8 (two's complement)
//   [dq_scale    : ceil(n/64/256) f32] one scale per group of 256 absmax values
//   [absmax_mean : 1 f32       ] mean of all absmax values, subtracted before quantizing them
//
// Values: weight = NF4_CODE[code] * absmax, absmax = absmax_q * dq_scale / 127 + absmax_mean.
// Double quantization is symmetric linear int8 per 256-group (bitsandbytes uses a dynamic
// 8-bit map there; loom's NF4 bytes are not exchanged with bitsandbytes, only the NF4 rules are).
#pragma once

#include <array>
#include <cstdint>

namespace loom {

inline constexpr int64_t kNf4BlockSize = 64;
inline constexpr int64_t kNf4AbsmaxGroup = 256;

// The 16 NF4 code values, index 0..15 (QLoRA paper / bitsandbytes).
inline constexpr std::array<float, 16> kNf4Codes = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

int64_t nf4_storage_bytes(int64_t n);

}  // namespace loom
