"""The exact int8 x int8 -> int32 GEMM under the integer layers: `torch._int_mm` or an exact fallback.

On this PyTorch build (2.13, CPU) `torch._int_mm` accepts every 2-D int8 shape (measured: M = 1,
K = 7, N = 12 and K = 0 give exact results), unlike CUDA, which needs M > 16 and K, N multiples of 8;
but it misreads operands whose size-1 dimension has an unusual stride (e.g. `W.t()` when
in_features = 1), so such operands are copied to a dense layout first. Where `_int_mm` does not fit,
the same int32 accumulator comes from a float64 matmul of the codes, exact because every partial sum
is an integer far below 2**53.

Example:
    >>> import torch
    >>> a = torch.tensor([[1, -2, 3]], dtype=torch.int8)
    >>> int8_matmul(a, a.t()).tolist()
    [[14]]
"""

from __future__ import annotations

import torch

__all__ = ["int8_matmul", "int_mm_fits"]

INT32_MAX = 2**31 - 1
# Largest |code| of an int8 activation after uint8 codes are shifted to int8: -128.
MAX_ACT_CODE = 128


def int_mm_fits(m: int, k: int, n: int, device_type: str) -> bool:
    """Whether `torch._int_mm` accepts an (m, k) x (k, n) int8 product on this device.

    CPU accepts every shape on this build (checked by the tests); CUDA needs m > 16 and k, n
    positive multiples of 8; other devices have no `_int_mm` we rely on.

    Args:
        m, k, n: the product's sizes.
        device_type: `tensor.device.type`, e.g. "cpu" or "cuda".

    Returns:
        True where `_int_mm` can compute the product.

    Example:
        >>> int_mm_fits(1, 7, 3, "cpu"), int_mm_fits(16, 64, 64, "cuda"), int_mm_fits(32, 64, 64, "cuda")
        (True, False, True)
    """
    if device_type == "cpu":
        return True
    if device_type == "cuda":
        return m > 16 and k > 0 and k % 8 == 0 and n > 0 and n % 8 == 0
    return False


def _dense_layout(t: torch.Tensor) -> torch.Tensor:
    """`t` itself if it is plainly row-major, or column-major with both sizes > 1; else a row-major copy.

    CPU `_int_mm` reads operands whose size-1 dimension carries an unusual stride from the wrong
    place (measured on torch 2.13: `x @ W.t()` with in_features = 1 gives garbage, and so does a
    (1, K) operand with strides (1, 1)). Strides of size-1 dimensions are arbitrary in PyTorch, so
    anything but the two dense layouts is copied; the copy is tiny or never happens in a model.
    """
    rows, cols = t.shape
    if t.stride() == (cols, 1) or (rows > 1 and cols > 1 and t.stride() == (1, rows)):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int8 x int8 -> int32 matrix product `a @ b`.

    `torch._int_mm` where it fits (`int_mm_fits`), with operands in a dense layout it reads right;
    otherwise a float64 matmul of the codes, exact for any K below 2**53 / 128**2, giving the same
    int32 values.

    Args:
        a: `(M, K)` int8 codes.
        b: `(K, N)` int8 codes (a transposed view is fine).

    Returns:
        `(M, N)` int32 accumulator.

    Example:
        >>> import torch
        >>> a = torch.tensor([[1, -2, 3]], dtype=torch.int8)
        >>> int8_matmul(a, a.t()).tolist()
        [[14]]
    """
    if a.dtype != torch.int8 or b.dtype != torch.int8 or a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"int8_matmul needs two 2-D int8 tensors, got {a.dtype} {tuple(a.shape)} and {b.dtype}")
    if int_mm_fits(a.shape[0], a.shape[1], b.shape[1], a.device.type):
        try:
            return torch._int_mm(_dense_layout(a), _dense_layout(b))
        except RuntimeError:
            pass  # a build with stricter shape rules than we know of: the exact path below gives the same values
    return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(torch.int32)


def abs_row_sum(weight_int: torch.Tensor) -> torch.Tensor:
    """Per-row sum of |codes|, in int64 (bounds the int32 accumulator).

    Example:
        >>> abs_row_sum(torch.tensor([[-128, 1]], dtype=torch.int8)).tolist()
        [129]
    """
    # Widen before abs: int8 abs(-128) wraps to -128.
    return weight_int.to(torch.int64).abs().sum(dim=1)
