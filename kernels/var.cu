// VAR on the GPU: one pass over memory.
//
//   M = softmax(T * |A|, over the K classes);  VAR_k = A_k * M_k * [M_k - 1/K > tau]
//
// Layout: attributions [N, K, P] (P = product of the trailing dims, the "plane"), C-contiguous.
// Each thread owns VEC consecutive positions of one plane: it reads their K values (stride P
// between classes) once into registers, computes the max, the softmax sum and the mask there,
// and writes the K outputs. Memory traffic is exactly one read and one write of the tensor.
//
// Entry points (extern "C", so CuPy can look them up by name in a fatbin or an NVRTC module):
//   varrt_var_f32_k{8,16,32,64}_v{1,4}   float,  register path for K <= 8/16/32/64
//   varrt_var_f16_k{8,16,32,64}_v{1,4}   half,   same (stored as IEEE binary16, maths in float)
//   varrt_var_f32_loop / varrt_var_f16_loop
//        any K: keeps nothing in registers and re-reads the K values from global memory three
//        times (max, sum, write). Used only for K > 64, where a register array would spill to
//        local memory anyway; the re-reads mostly hit L1/L2 since they are close in time.
// v4 entries load and store 4 positions at once (float4 / 4 halves in 8 bytes); the launcher
// picks them only when P % 4 == 0 and both pointers are 16-byte (float) / 8-byte (half) aligned,
// and only for K <= 16, where 4*K floats still fit comfortably in registers.
//
// Half precision is converted with PTX cvt instructions rather than cuda_fp16.h so that the
// source compiles under NVRTC without any CUDA headers on the include path.

typedef unsigned short varrt_half;

__device__ __forceinline__ float h2f(varrt_half h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ varrt_half f2h(float f) {
    varrt_half h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// Load / store VEC consecutive elements as floats. Specialised per (type, VEC) so the vector
// cases compile to a single 16-byte (float4) or 8-byte (4 halves) transaction.
template <typename T, int VEC> struct Io;

template <> struct Io<float, 1> {
    static __device__ __forceinline__ void load(const float* p, float* v) { v[0] = __ldg(p); }
    static __device__ __forceinline__ void store(float* p, const float* v) { *p = v[0]; }
};

template <> struct Io<float, 4> {
    static __device__ __forceinline__ void load(const float* p, float* v) {
        float4 q = __ldg(reinterpret_cast<const float4*>(p));
        v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
    }
    static __device__ __forceinline__ void store(float* p, const float* v) {
        *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    }
};

template <> struct Io<varrt_half, 1> {
    static __device__ __forceinline__ void load(const varrt_half* p, float* v) { v[0] = h2f(*p); }
    static __device__ __forceinline__ void store(varrt_half* p, const float* v) { *p = f2h(v[0]); }
};

template <> struct Io<varrt_half, 4> {
    static __device__ __forceinline__ void load(const varrt_half* p, float* v) {
        uint2 q = __ldg(reinterpret_cast<const uint2*>(p));
        v[0] = h2f((varrt_half)(q.x & 0xffffu)); v[1] = h2f((varrt_half)(q.x >> 16));
        v[2] = h2f((varrt_half)(q.y & 0xffffu)); v[3] = h2f((varrt_half)(q.y >> 16));
    }
    static __device__ __forceinline__ void store(varrt_half* p, const float* v) {
        uint2 q;
        q.x = (unsigned int)f2h(v[0]) | ((unsigned int)f2h(v[1]) << 16);
        q.y = (unsigned int)f2h(v[2]) | ((unsigned int)f2h(v[3]) << 16);
        *reinterpret_cast<uint2*>(p) = q;
    }
};

// The formula for one position, shared by every variant so they agree bit for bit with each
// other. The division e / s (not e * (1/s)) matches the NumPy reference's rounding, which
// matters only for values that sit right on the tau threshold.
__device__ __forceinline__ float var_value(float a, float m, float s, float temperature,
                                           float inv_k, float tau) {
    float mk = expf(temperature * fabsf(a) - m) / s;
    return (mk - inv_k > tau) ? a * mk : 0.0f;
}

// Register path: K <= KMAX. The loops over KMAX are fully unrolled with a runtime `k < K`
// guard, so v[][] is indexed by constants and lives in registers.
template <typename T, int KMAX, int VEC>
__device__ __forceinline__ void var_registers(const T* __restrict__ x, T* __restrict__ y,
                                              long long groups, int K, long long P,
                                              float temperature, float tau) {
    const float inv_k = 1.0f / (float)K;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        const long long pos = g * VEC;           // flat position in [0, N*P)
        const long long n = pos / P;
        const long long base = n * K * P + (pos - n * P);
        float v[KMAX][VEC];
        float m[VEC];
#pragma unroll
        for (int j = 0; j < VEC; ++j) m[j] = 0.0f;  // T*|a| >= 0, so 0 is a safe start
#pragma unroll
        for (int k = 0; k < KMAX; ++k) {
            if (k < K) {
                Io<T, VEC>::load(x + base + (long long)k * P, v[k]);
#pragma unroll
                for (int j = 0; j < VEC; ++j) m[j] = fmaxf(m[j], temperature * fabsf(v[k][j]));
            }
        }
        float s[VEC];
#pragma unroll
        for (int j = 0; j < VEC; ++j) s[j] = 0.0f;
#pragma unroll
        for (int k = 0; k < KMAX; ++k) {
            if (k < K) {
#pragma unroll
                for (int j = 0; j < VEC; ++j) s[j] += expf(temperature * fabsf(v[k][j]) - m[j]);
            }
        }
#pragma unroll
        for (int k = 0; k < KMAX; ++k) {
            if (k < K) {
                float out[VEC];
#pragma unroll
                for (int j = 0; j < VEC; ++j)
                    out[j] = var_value(v[k][j], m[j], s[j], temperature, inv_k, tau);
                Io<T, VEC>::store(y + base + (long long)k * P, out);
            }
        }
    }
}

// Fallback for any K: re-reads global memory instead of holding K values per thread.
template <typename T>
__device__ __forceinline__ void var_loop(const T* __restrict__ x, T* __restrict__ y,
                                         long long groups, int K, long long P,
                                         float temperature, float tau) {
    const float inv_k = 1.0f / (float)K;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        const long long n = g / P;
        const long long base = n * K * P + (g - n * P);
        float a, m = 0.0f, s = 0.0f;
        for (int k = 0; k < K; ++k) {
            Io<T, 1>::load(x + base + (long long)k * P, &a);
            m = fmaxf(m, temperature * fabsf(a));
        }
        for (int k = 0; k < K; ++k) {
            Io<T, 1>::load(x + base + (long long)k * P, &a);
            s += expf(temperature * fabsf(a) - m);
        }
        for (int k = 0; k < K; ++k) {
            Io<T, 1>::load(x + base + (long long)k * P, &a);
            float out = var_value(a, m, s, temperature, inv_k, tau);
            Io<T, 1>::store(y + base + (long long)k * P, &out);
        }
    }
}

// `groups` = N * P / VEC: the number of VEC-wide position groups.
#define VARRT_REGISTER_ENTRY(NAME, T, KMAX, VEC)                                              \
    extern "C" __global__ void __launch_bounds__(256)                                        \
    NAME(const T* __restrict__ x, T* __restrict__ y, long long groups, int K, long long P,    \
         float temperature, float tau) {                                                     \
        var_registers<T, KMAX, VEC>(x, y, groups, K, P, temperature, tau);                   \
    }

VARRT_REGISTER_ENTRY(varrt_var_f32_k8_v1, float, 8, 1)
VARRT_REGISTER_ENTRY(varrt_var_f32_k16_v1, float, 16, 1)
VARRT_REGISTER_ENTRY(varrt_var_f32_k32_v1, float, 32, 1)
VARRT_REGISTER_ENTRY(varrt_var_f32_k64_v1, float, 64, 1)
VARRT_REGISTER_ENTRY(varrt_var_f32_k8_v4, float, 8, 4)
VARRT_REGISTER_ENTRY(varrt_var_f32_k16_v4, float, 16, 4)
VARRT_REGISTER_ENTRY(varrt_var_f16_k8_v1, varrt_half, 8, 1)
VARRT_REGISTER_ENTRY(varrt_var_f16_k16_v1, varrt_half, 16, 1)
VARRT_REGISTER_ENTRY(varrt_var_f16_k32_v1, varrt_half, 32, 1)
VARRT_REGISTER_ENTRY(varrt_var_f16_k64_v1, varrt_half, 64, 1)
VARRT_REGISTER_ENTRY(varrt_var_f16_k8_v4, varrt_half, 8, 4)
VARRT_REGISTER_ENTRY(varrt_var_f16_k16_v4, varrt_half, 16, 4)

extern "C" __global__ void __launch_bounds__(256)
varrt_var_f32_loop(const float* __restrict__ x, float* __restrict__ y, long long groups, int K,
                   long long P, float temperature, float tau) {
    var_loop<float>(x, y, groups, K, P, temperature, tau);
}

extern "C" __global__ void __launch_bounds__(256)
varrt_var_f16_loop(const varrt_half* __restrict__ x, varrt_half* __restrict__ y, long long groups,
                   int K, long long P, float temperature, float tau) {
    var_loop<varrt_half>(x, y, groups, K, P, temperature, tau);
}
