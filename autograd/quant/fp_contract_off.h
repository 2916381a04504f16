// Include LAST in every quant .cpp file: turns off fusing a*b+c into one FMA for the rest of the
// translation unit. The formats are defined with the product and the sum rounded separately, as
// gguf-py computes them: the Q4_1 quantizer's (x - min) * id + 0.5 must round twice to give
// gguf-py's bytes, and GCC contracts such expressions -- even _mm512_mul_ps + _mm512_add_ps
// intrinsics -- whenever FMA is enabled (-mfma, -march=native). (The 4-bit dequant products are
// exact in f32, so there contraction would not change a result; keeping it off everywhere means no
// formula change can make the fast path and the reference drift apart silently.)
#pragma once

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
