"""Checks for the linear recurrence h_t = a_t h_{t-1} + b_t four ways (sequential, parallel,
chunked, Triton): one set of checks made for each, plus the parallel and chunked forms' own."""

import torch
import torch.nn.functional as F

from grader.harness.checking import (
    Mistake,
    expect_close,
    expect_value_error,
    named,
    naming_crashes,
)
from grader.harness.triton_watch import (
    expect_in_bounds,
    name_row_stride_block,
    out_of_bounds_message,
    tree_shaped_scans,
    watch_kernels,
)
from grader.suites._common import call_unchanged, draw, expect_flat_python_work, randn


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
    previous_decay = torch.cat([torch.ones_like(a[..., :1]), a[..., :-1]], -1)  # a_{t-1} at t
    return [
        ("combine_wrong_order", wrong_order64(a, b)),
        ("exclusive_scan", torch.cat([zero, h[..., :-1]], -1)),
        ("exclusive_plus_b", torch.cat([zero, h[..., :-1]], -1) + b.double()),
        ("shifted_left", torch.cat([h[..., 1:], h[..., -1:]], -1)),
        ("shifted_left", torch.cat([h[..., 1:], zero], -1)),
        ("last_step_skipped", torch.cat([h[..., :-1], zero], -1)),
        ("decay_after_write", loop64(a, a.double() * b.double())),
        ("reversed_time", loop64(a.flip(-1), b.flip(-1)).flip(-1)),
        ("state_not_reset", flat),
        ("scan_along_first_axis", loop64(a.movedim(0, -1), b.movedim(0, -1)).movedim(-1, 0)),
        *along_dim_1(a, b),
        ("decay_shifted", loop64(previous_decay, b)),
        ("initial_state_one", h + torch.cumprod(a.double(), -1)),
        ("a_b_swapped", loop64(b, a)),
    ]


def along_dim_1(a, b) -> list:
    """The scan run along dim 1 (a[:, t]) of a 3-D input, as a suspect (none for fewer dims)."""
    if a.ndim < 3:
        return []
    return [("scan_along_dim_1", loop64(a.movedim(1, -1), b.movedim(1, -1)).movedim(-1, 1))]


def recurrence_inputs(rng, shape, dtype=torch.float64):
    """a in (-1, 1) (some negative: a scan must not assume a > 0), b standard normal."""
    a = (2 * torch.rand(shape, generator=rng, dtype=torch.float64) - 1).to(dtype)
    return a, randn(shape, rng, dtype)


def expect_recurrence(out, a, b, what, extra_suspects=(), nonfinite=None):
    suspects = list(extra_suspects) + recurrence_suspects(a, b)
    expect_close(out, loop64(a, b), a.dtype, what, suspects, nonfinite)


# Indexing time as dim 1 (a[:, t], H[:, d:]) crashes on a 1-D (L,) input, and on a 3-D one once
# t passes the size of dim 1.
TIME_AS_DIM_1 = (
    ("scan_along_dim_1", "IndexError", "too many indices for tensor of dimension 1"),
    ("scan_along_dim_1", "IndexError", "out of bounds for dimension 1"),
)


def call_on(call, impl, a, b):
    """call(impl, a, b), which must leave a and b as they were; time indexed as dim 1 is named."""
    with naming_crashes(*TIME_AS_DIM_1):
        return call_unchanged(lambda a, b: call(impl, a, b), {"a": a, "b": b})


def make_recurrence_checks(
    name: str,
    call,
    dtypes=(torch.float64, torch.float32),
    max_len=70,
    long_len=3000,
    suspects=lambda a, b: (),
):
    """Checks shared by the four recurrence exercises; `call(impl, a, b)` runs the student's;
    `suspects(a, b)` adds the exercise's own named mistakes. `long_len` is the length of the
    long row of slow decays (None: no long row, for the Triton interpreter)."""

    def matches(impl, rng):
        """matches the float64 loop on (batch, dim, L) inputs, odd L"""
        for dtype in dtypes:
            shape = (draw(rng, 2, 3), draw(rng, 2, 4), 2 * draw(rng, 3, max_len // 2) + 1)
            a, b = recurrence_inputs(rng, shape, dtype)
            out = call_on(call, impl, a, b)
            expect_recurrence(out, a, b, f"{name} on {shape} {dtype}", suspects(a, b))

    def shapes(impl, rng):
        """any leading dims: (L,), (rows, L); L = 1 and L = 2 by hand"""
        dtype = dtypes[0]
        for shape in [(draw(rng, 5, max_len),), (draw(rng, 2, 5), draw(rng, 5, 40)), (3, 1), (2,)]:
            a, b = recurrence_inputs(rng, shape, dtype)
            expect_recurrence(call_on(call, impl, a, b), a, b, f"{name} on {shape}", suspects(a, b))

    def rows_independent(impl, rng):
        """each batch row starts from h = 0 (the state is reset between rows)"""
        dtype = dtypes[0]
        L = 2 * draw(rng, 2, 6) + 1  # odd: never a power of two, so every doubling step counts
        a = torch.ones(4, L, dtype=dtype)
        b = randn((4, L), rng, dtype)
        out = call_on(call, impl, a, b)
        expect_recurrence(out, a, b, f"{name} on 4 rows with a = 1 (running sums)", suspects(a, b))

    def zero_decays_and_long_rows(impl, rng):
        """an a_t = 0 and a long row of slow decays: nothing divides by a running product"""
        dtype = dtypes[0]
        L, t = draw(rng, 9, max_len), draw(rng, 1, 7)
        a, b = recurrence_inputs(rng, (2, L), dtype)
        # in row 0 only: past an a_t = 0 nothing before t reaches h, so row 1 keeps the whole
        # history (one doubling step too few shows there, and P from one cumprod over the whole
        # row differs from no carry at all)
        a[0, t] = 0.0
        cases = [(a, b, f"{name} on {(2, L)} with a[0, {t}] = 0")]
        if long_len:  # their product underflows to 0 in float64 past t ~ 2400 (e^-0.31 a step)
            decays = 0.5 + 0.5 * torch.rand(1, long_len, generator=rng, dtype=torch.float64)
            long_b = randn((1, long_len), rng, dtype)
            cases.append((decays.to(dtype), long_b, f"{name} on (1, {long_len}), a in [0.5, 1)"))
        for a, b, what in cases:
            out = call_on(call, impl, a, b)
            divides = named("divides_by_running_product")
            if b.shape[-1] > max_len:  # no suspects: some are O(L^2) loops, seconds at this length
                expect_close(out, loop64(a, b), a.dtype, what, nonfinite=divides)
            else:
                expect_recurrence(out, a, b, what, suspects(a, b), divides)

    def rejects_bad_input(impl, rng):
        """mismatched shapes and 0-d tensors give a clear ValueError"""
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
        expect_value_error(
            lambda: call(impl, a[0, 0], b[0, 0]),
            f"{name} with 0-d a and b (no time axis)",
            "no_error_for_bad_input",
        )

    matches.__name__, shapes.__name__ = f"{name}_matches", f"{name}_shapes"
    return [matches, shapes, rows_independent, zero_decays_and_long_rows, rejects_bad_input]


def doubling64(
    a, b, steps: int, compose_a=True, h_sees_new_a=False, left_a=False, offsets=None, wrap=False
):
    """Hillis-Steele in float64 with `steps` doubling steps: step d = 1, 2, 4, ... combines
    each position with the one d before it. Its mistakes: the decays never composed
    (`compose_a=False`), composed before H reads them (`h_sees_new_a`), the absorbed H
    decayed by the earlier position's A_{t-d} instead of A_t (`left_a`), other `offsets` than
    the doublings, or the shift wrapping the row's end around to its start (`wrap`, torch.roll:
    the first d positions absorb the last d instead of the identity)."""
    A, H = a.double(), b.double()
    for d in offsets or [2**k for k in range(steps)]:
        if wrap:
            A, H = A.roll(d, -1) * A, A * H.roll(d, -1) + H
            continue
        A_new = torch.cat([A[..., :d], A[..., :-d] * A[..., d:]], -1) if compose_a else A
        A_read = A_new if h_sees_new_a else A
        decay = A_read[..., :-d] if left_a else A_read[..., d:]
        H = torch.cat([H[..., :d], decay * H[..., :-d] + H[..., d:]], -1)
        A = A_new
    return H


def parallel_suspects(a, b):
    """The doubling steps done wrong: one too few, the decays not composed or updated first."""
    L = b.shape[-1]
    steps = (L - 1).bit_length()  # ceil(log2 L)
    return [
        ("missing_last_step", doubling64(a, b, L.bit_length() - 1)),  # floor(log2 L)
        ("decays_not_composed", doubling64(a, b, steps, compose_a=False)),
        ("decays_updated_before_h", doubling64(a, b, steps, h_sees_new_a=True)),
        ("decay_from_left", doubling64(a, b, steps, left_a=True)),
        ("offsets_not_doubled", doubling64(a, b, steps, offsets=range(1, min(steps + 1, L)))),
        # `d += 1` while d < L: every offset up to L - 1 (O(L) steps, each a whole-row update)
        ("offsets_not_doubled", doubling64(a, b, steps, offsets=range(1, L))),
        ("shift_wraps_around", doubling64(a, b, steps, wrap=True)),
    ]


def parallel_log_steps(impl, rng):
    """O(log L) vectorised steps: the Python work does not grow with L (no loop over time)"""

    def at(L):
        a, b = recurrence_inputs(torch.Generator().manual_seed(0), (2, L))
        return lambda: impl(a, b)

    expect_flat_python_work(
        "linear_recurrence_parallel",
        "sequential_loop",
        ("L = 64", at(64)),
        ("L = 2048", at(2048)),
        slack=120,
    )


def chunked64(a, b, chunk_size, output, next_carry):
    """The chunked scan in float64, with its two formulas given: `output(local, a_c, carry)`
    the chunk's h from its local scan, its a and the state entering it (..., 1), and
    `next_carry(h, local, a_c, carry)` the state entering the next chunk."""
    h = torch.empty_like(b, dtype=torch.float64)
    carry = torch.zeros_like(b[..., :1], dtype=torch.float64)  # (..., 1)
    for start in range(0, b.shape[-1], chunk_size):
        part = slice(start, start + chunk_size)
        a_c = a[..., part].double()
        local = loop64(a_c, b[..., part])
        h[..., part] = output(local, a_c, carry)
        carry = next_carry(h[..., part], local, a_c, carry)
    return h


def _carried(local, a_c, carry):
    return local + torch.cumprod(a_c, -1) * carry


def _true_end(h, local, a_c, carry):
    return local[..., -1:] + torch.cumprod(a_c, -1)[..., -1:] * carry


def _last(h, local, a_c, carry):
    return h[..., -1:]


def _without_a_t(local, a_c, carry):
    """The carry decayed from the chunk start up to t, a_t left out."""
    return local + torch.cumprod(F.pad(a_c[..., :-1], (1, 0), value=1.0), -1) * carry


def whole_row_decay64(a, b, chunk_size):
    """The chunked scan with its decays P from one cumprod over the whole row, not restarting in
    each chunk (the carries decay from the row's start)."""
    decay = torch.cumprod(a.double(), -1)
    h = torch.empty_like(b, dtype=torch.float64)
    carry = torch.zeros_like(b[..., :1], dtype=torch.float64)  # (..., 1)
    for start in range(0, b.shape[-1], chunk_size):
        part = slice(start, start + chunk_size)
        local = loop64(a[..., part], b[..., part])
        h[..., part] = local + decay[..., part] * carry
        carry = decay[..., part][..., -1:] * carry + local[..., -1:]
    return h


def chunk_suspects(a, b, chunk_size):
    """The chunked scan with the carry between chunks done wrong, or the chunks cut wrong."""
    L = b.shape[-1]
    last = (L // chunk_size) * chunk_size
    dropped = loop64(a, b)
    dropped[..., last:] = 0
    n = -(-L // chunk_size)
    pad = n * chunk_size - L
    # padded at the front, cropped at the end: h shifted right by pad, zeros first
    front_padded = F.pad(loop64(a, b), (pad, 0))[..., :L]
    # reshaped to (C, n) and transposed: chunk j holds positions j, j + n, j + 2n, ...
    strided = torch.arange(n * chunk_size).view(chunk_size, n).T.flatten()
    a_p, b_p = F.pad(a, (0, pad), value=1.0), F.pad(b, (0, pad))
    chunks_strided = loop64(a_p[..., strided], b_p[..., strided])[..., :L]

    def undecayed(local, a_c, carry):
        return local + carry

    def carried_twice(h, local, a_c, carry):
        return h[..., -1:] + torch.cumprod(a_c, -1)[..., -1:] * carry

    def local_end(h, local, a_c, carry):
        return local[..., -1:]

    def own_end(local, a_c, carry):  # the chunk corrected by the state at its own end
        return _carried(local, a_c, _true_end(None, local, a_c, carry))

    def ends_summed(h, local, a_c, carry):
        return carry + local[..., -1:]

    def decayed_by_first_a(h, local, a_c, carry):
        return a_c[..., :1] * carry + local[..., -1:]

    return [
        ("no_carry", chunked64(a, b, chunk_size, lambda local, a_c, carry: local, _last)),
        ("carry_not_decayed", chunked64(a, b, chunk_size, undecayed, _true_end)),
        ("carry_not_decayed", chunked64(a, b, chunk_size, undecayed, _last)),
        ("decay_without_a_t", chunked64(a, b, chunk_size, _without_a_t, _last)),
        ("carry_from_local_end", chunked64(a, b, chunk_size, _carried, local_end)),
        ("carry_added_twice", chunked64(a, b, chunk_size, _carried, carried_twice)),
        ("carry_not_shifted", chunked64(a, b, chunk_size, own_end, _true_end)),
        ("ends_summed", chunked64(a, b, chunk_size, _carried, ends_summed)),
        ("carry_decayed_by_first_a", chunked64(a, b, chunk_size, _carried, decayed_by_first_a)),
        ("decay_over_whole_row", whole_row_decay64(a, b, chunk_size)),
        ("drops_last_chunk", dropped),
        ("drops_last_chunk", dropped[..., :last]),
        ("front_padding", front_padded),
        ("chunks_strided", chunks_strided),
    ]


def chunked_sizes(impl, rng):
    """chunk_size 1, 3, L - 1 (a short last chunk), L and > L"""
    L = draw(rng, 9, 40)
    a, b = recurrence_inputs(rng, (2, 3, L))
    for chunk_size in (1, 3, draw(rng, 4, 7), L - 1, L, L + draw(rng, 1, 5)):
        expect_recurrence(
            call_unchanged(impl, {"a": a, "b": b}, chunk_size),
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
            "no_error_for_bad_chunk_size",
        )


# ----------------------------------------------------------------------------- the Triton scan


def call_triton(impl, a, b):
    """impl(a, b) with its launches watched (every load and store inside the tensors) and its
    scans combined in a tree, as on a GPU: the interpreter's own scan runs left to right and
    never composes two blocks, so a combine that is right only that way would pass here."""
    h, watch = watched_triton(impl, a, b)
    if watch.out_of_bounds:
        strayed = out_of_bounds_message("linear_recurrence_triton", watch)
        with tree_shaped_scans():
            name_row_stride_block(strayed, impl, loop64, a, b)
        name_grid_from_first_dim(impl, a, b)
    expect_in_bounds(watch, "linear_recurrence_triton")
    expect_every_row_read(watch, a)
    return h


def watched_triton(impl, a, b):
    """(impl(a, b), the watch of its launches), its scans combined in a tree."""
    scan_axis = ("scan_axis_not_0", "InterpreterError", "axis", "out of bounds")
    with watch_kernels() as watch, tree_shaped_scans(), naming_crashes(scan_axis):
        try:
            return impl(a, b), watch
        except Mistake as raised:
            if "must be a power of 2" in raised.message:
                raise named("block_not_power_of_two") from raised
            raise


def name_grid_from_first_dim(impl, a, b):
    """After a launch on a 1-D (L,) input strayed out of bounds: if the same row as (1, L) stays
    in bounds and is right, the grid counted a.shape[0] = L programs for the one row, and every
    program past the first ran outside the tensors: raise the mistake grid_from_first_dim."""
    if a.ndim != 1:
        return
    try:
        h, watch = watched_triton(impl, a[None], b[None])
    except Mistake:
        return
    expected = loop64(a[None], b[None])
    right = isinstance(h, torch.Tensor) and h.shape == expected.shape
    if right and not watch.out_of_bounds and torch.allclose(h.double(), expected, 1e-4, 1e-5):
        raise named("grid_from_first_dim")


def expect_every_row_read(watch, a):
    """The kernels read every b and every a but a_0 (it meets h_{-1} = 0), in every row: fewer
    loads mean programs were never launched for some rows, whose h is then never written. The
    interpreter counts the loads; on a GPU (none counted) this is skipped."""
    rows = a.numel() // max(a.shape[-1], 1)
    needed = 2 * a.numel() - rows
    if 0 < watch.elements_loaded < needed:
        mistake = named("rows_not_launched")
        raise Mistake(
            f"linear_recurrence_triton on {rows} rows of L = {a.shape[-1]}: its kernels read "
            f"{watch.elements_loaded} elements of a and b, of {2 * a.numel()}. {mistake.message}",
            mistake.hint,
            mistake.key,
        )


def tree_scan64(a, b, combine):
    """The scan of (a, b) with `combine(a_left, b_left, a_right, b_right)` in float64, in the
    tree order of `tree_shaped_scans`: step d combines each position with the one d before it."""
    A, H = a.double(), b.double()
    step = 1
    while step < A.shape[-1]:
        A_new, H_new = combine(A[..., :-step], H[..., :-step], A[..., step:], H[..., step:])
        A, H = torch.cat([A[..., :step], A_new], -1), torch.cat([H[..., :step], H_new], -1)
        step *= 2
    return H


def triton_suspects(a, b):
    """scan_combine written wrong, and the wrong field of the scan stored."""
    return [
        ("combine_a_not_composed", tree_scan64(a, b, lambda al, bl, ar, br: (al, ar * bl + br))),
        ("combine_a_not_composed", tree_scan64(a, b, lambda al, bl, ar, br: (ar, ar * bl + br))),
        (
            "combine_a_not_composed",
            tree_scan64(a, b, lambda al, bl, ar, br: (al + ar, ar * bl + br)),
        ),
        ("combine_decays_own_b", tree_scan64(a, b, lambda al, bl, ar, br: (al * ar, al * bl + br))),
        ("scan_product_stored", torch.cumprod(a.double(), -1)),
    ]


def as_if_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The (rows, L) view `t` read as a kernel indexing row * L + column reads it: its memory as
    if it were contiguous."""
    return t.as_strided(t.shape, (t.shape[-1], 1))


def triton_strided_inputs(impl, rng):
    """inputs that are strided views (every other column of a wider tensor)"""
    rows, L = draw(rng, 2, 4), draw(rng, 5, 20)
    a, b = recurrence_inputs(rng, (rows, 2 * L), torch.float32)
    a, b = a[:, ::2], b[:, ::2]  # (rows, L), strides (2L, 2)
    strided_as_contiguous = loop64(as_if_contiguous(a), as_if_contiguous(b))
    expect_recurrence(
        call_triton(impl, a, b),
        a,
        b,
        f"linear_recurrence_triton on a[:, ::2], b[:, ::2] of shape {(rows, L)}",
        [("strided_as_contiguous", strided_as_contiguous), *triton_suspects(a, b)],
    )
