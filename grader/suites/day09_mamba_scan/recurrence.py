"""Checks for the linear recurrence h_t = a_t h_{t-1} + b_t four ways (sequential, parallel,
chunked, Triton): one set of checks made for each, plus the parallel and chunked forms' own."""

import torch

from grader.harness.checking import Mistake, expect_close, expect_value_error, student_lines
from grader.suites._common import draw, randn
from grader.suites.day09_mamba_scan.hints import HINTS


def loop64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t along the last axis, in float64, one step at a time."""
    a, b = a.double(), b.double()
    h, state = torch.empty_like(b), torch.zeros_like(b[..., 0])
    for t in range(b.shape[-1]):
        state = a[..., t] * state + b[..., t]
        h[..., t] = state
    return h


def wrong_order64(a, b):
    """The maps composed in reverse: h'_t = b_0 + a_0 (b_1 + a_1 (... b_t))."""
    a, b = a.double(), b.double()
    h = torch.empty_like(b)
    for t in range(b.shape[-1]):
        state = torch.zeros_like(b[..., 0])
        for s in range(t, -1, -1):
            state = a[..., s] * state + b[..., s]
        h[..., t] = state
    return h


def recurrence_suspects(a, b) -> list:
    h = loop64(a, b)
    zero = torch.zeros_like(h[..., :1])
    flat = loop64(a.reshape(1, -1), b.reshape(1, -1)).reshape(h.shape)
    return [
        ("combine_wrong_order", wrong_order64(a, b)),
        ("exclusive_scan", torch.cat([zero, h[..., :-1]], -1)),
        ("exclusive_plus_b", torch.cat([zero, h[..., :-1]], -1) + b.double()),
        ("shifted_left", torch.cat([h[..., 1:], h[..., -1:]], -1)),
        ("shifted_left", torch.cat([h[..., 1:], zero], -1)),
        ("decay_after_write", loop64(a, a.double() * b.double())),
        ("reversed_time", loop64(a.flip(-1), b.flip(-1)).flip(-1)),
        ("state_not_reset", flat),
    ]


def recurrence_inputs(rng, shape, dtype=torch.float64):
    """a in (-1, 1) (some negative: a scan must not assume a > 0), b standard normal."""
    a = (2 * torch.rand(shape, generator=rng, dtype=torch.float64) - 1).to(dtype)
    return a, randn(shape, rng, dtype)


def expect_recurrence(out, a, b, what, extra_suspects=()):
    expect_close(out, loop64(a, b), a.dtype, what, list(extra_suspects) + recurrence_suspects(a, b))


def make_recurrence_checks(
    name: str, call, dtypes=(torch.float64, torch.float32), max_len=70, suspects=lambda a, b: ()
):
    """Checks shared by the four recurrence exercises; `call(impl, a, b)` runs the student's;
    `suspects(a, b)` adds the exercise's own named mistakes."""

    def matches(impl, rng):
        """matches the float64 loop on (batch, dim, L) inputs, odd L"""
        for dtype in dtypes:
            shape = (draw(rng, 2, 3), draw(rng, 2, 4), 2 * draw(rng, 3, max_len // 2) + 1)
            a, b = recurrence_inputs(rng, shape, dtype)
            expect_recurrence(call(impl, a, b), a, b, f"{name} on {shape} {dtype}", suspects(a, b))

    def shapes(impl, rng):
        """any leading dims: (L,), (rows, L); L = 1 and L = 2 by hand"""
        dtype = dtypes[0]
        for shape in [(draw(rng, 5, max_len),), (draw(rng, 2, 5), draw(rng, 5, 40)), (3, 1), (2,)]:
            a, b = recurrence_inputs(rng, shape, dtype)
            expect_recurrence(call(impl, a, b), a, b, f"{name} on {shape}", suspects(a, b))

    def rows_independent(impl, rng):
        """each batch row starts from h = 0 (the state is reset between rows)"""
        dtype = dtypes[0]
        L = draw(rng, 4, 12)
        a = torch.ones(4, L, dtype=dtype)
        b = randn((4, L), rng, dtype)
        expect_recurrence(call(impl, a, b), a, b, f"{name} on 4 rows with a = 1 (running sums)")

    def rejects_bad_input(impl, rng):
        """mismatched shapes give a clear ValueError"""
        L = draw(rng, 4, 12)
        a, b = recurrence_inputs(rng, (2, L), dtypes[0])
        expect_value_error(
            lambda: call(impl, a, b[..., :-1]),
            f"{name} with a {tuple(a.shape)}, b {tuple(b[..., :-1].shape)}",
            "no_error_for_bad_input",
        )
        expect_value_error(
            lambda: call(impl, a, b.T),
            f"{name} with a {tuple(a.shape)}, b {tuple(b.T.shape)} (transposed)",
            "no_error_for_bad_input",
        )

    matches.__name__, shapes.__name__ = f"{name}_matches", f"{name}_shapes"
    return [matches, shapes, rows_independent, rejects_bad_input]


def parallel_log_steps(impl, rng):
    """O(log L) vectorised steps: the Python work does not grow with L (no loop over time)"""

    def at(L):
        a, b = recurrence_inputs(torch.Generator().manual_seed(0), (2, L))
        return lambda: impl(a, b)

    small, large = student_lines(at(64)), student_lines(at(2048))
    if large > small + 120:
        description, hint = HINTS["sequential_loop"]
        raise Mistake(
            f"linear_recurrence_parallel ran {small} lines of Python for L = 64 and "
            f"{large} for L = 2048: it looks like {description}.",
            hint,
            "sequential_loop",
        )


def chunk_suspects(a, b, chunk_size):
    """The chunked scan with the carry between chunks done wrong."""
    L = b.shape[-1]
    no_carry, undecayed = (
        torch.empty_like(b, dtype=torch.float64),
        torch.empty_like(b, dtype=torch.float64),
    )
    carry = torch.zeros_like(b[..., 0], dtype=torch.float64)
    for start in range(0, L, chunk_size):
        part = slice(start, min(start + chunk_size, L))
        local = loop64(a[..., part], b[..., part])
        no_carry[..., part] = local
        undecayed[..., part] = local + carry.unsqueeze(-1)
        carry = loop64(a[..., : part.stop], b[..., : part.stop])[..., -1]
    last = (L // chunk_size) * chunk_size
    dropped = loop64(a, b)
    dropped[..., last:] = 0
    return [
        ("no_carry", no_carry),
        ("carry_not_decayed", undecayed),
        ("drops_last_chunk", dropped),
        ("drops_last_chunk", dropped[..., :last]),
    ]


def chunked_sizes(impl, rng):
    """chunk_size 1, 3, L - 1 (a short last chunk), L and > L"""
    L = draw(rng, 9, 40)
    a, b = recurrence_inputs(rng, (2, 3, L))
    for chunk_size in (1, 3, draw(rng, 4, 7), L - 1, L, L + draw(rng, 1, 5)):
        expect_recurrence(
            impl(a, b, chunk_size),
            a,
            b,
            f"linear_recurrence_chunked(a, b, chunk_size={chunk_size}) with L = {L}",
            chunk_suspects(a, b, chunk_size),
        )


def chunked_rejects_bad_chunk(impl, rng):
    """chunk_size < 1 gives a clear ValueError"""
    a, b = recurrence_inputs(rng, (2, draw(rng, 4, 9)))
    for chunk_size in (0, -draw(rng, 1, 4)):
        expect_value_error(
            lambda: impl(a, b, chunk_size),
            f"linear_recurrence_chunked(a, b, chunk_size={chunk_size})",
            "no_error_for_bad_input",
        )
