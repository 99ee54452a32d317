"""Checks for the advanced Nyström section: landmarks, iterative_pinv and nystrom_attention,
with what each must not call."""

import torch

import course.reference.nystrom as nystrom_library
from grader.harness.checking import (
    Mistake,
    expect_close,
    expect_tensor,
    expect_value_error,
    named,
    relative_error,
)
from grader.harness.guard import SDPA
from grader.suites._common import (
    call_unchanged,
    draw,
    expect_flat_python_work,
    largest_allocation,
    randn,
    softmax64,
)
from grader.suites.day08_linear_attention.hints import HINTS, LIBRARY
from grader.suites.day08_linear_attention.oracles import bad_inputs, dtype_clash, inputs, runs

NYSTROM_COURSE = (
    "course.reference.nystrom is the course's library version, for later days: write yours."
)
NYSTROM_LIBRARY = {
    fn: NYSTROM_COURSE
    for fn in (
        nystrom_library.segment_bounds,
        nystrom_library.landmarks,
        nystrom_library.iterative_pinv,
        nystrom_library.nystrom_attention,
    )
}
INVERSES = {
    name: "write the iteration yourself: Z_0 = A^T / (||A||_1 ||A||_inf), then the "
    "update, with matrix products only."
    for name in (
        "linalg_pinv",
        "pinverse",
        "linalg_inv",
        "inverse",
        "linalg_solve",
        "linalg_lstsq",
        "linalg_svd",
        "svd",
        "linalg_eig",
        "linalg_eigh",
    )
}
PINV_FORBIDDEN = {**LIBRARY, **NYSTROM_LIBRARY, **INVERSES}
NYSTROM_FORBIDDEN = {**PINV_FORBIDDEN, **SDPA}  # softmax itself is allowed: three small kernels


def segment_ids(L: int, m: int) -> torch.Tensor:
    return torch.arange(L) * m // L


def landmarks64(x: torch.Tensor, m: int) -> torch.Tensor:
    """Segment means in float64, one segment at a time (token t in segment t * m // L)."""
    x = x.double()
    seg = segment_ids(x.shape[-2], m)
    return torch.stack([x[..., seg == i, :].mean(-2) for i in range(m)], dim=-2)


def landmark_suspects(x: torch.Tensor, m: int) -> list:
    """What the usual wrong landmarks give: strided samples, equal segments of L // m tokens."""
    x = x.double()
    L = x.shape[-2]
    step = L // m
    counts = torch.bincount(segment_ids(L, m), minlength=m).double()[:, None]  # (m, 1)
    starts = torch.tensor([(i * L + m - 1) // m for i in range(m)])
    suspects = [
        ("strided_landmarks", x[..., ::step, :]),
        ("strided_landmarks", x[..., ::step, :][..., :m, :]),
        ("strided_landmarks", x[..., starts, :]),
    ]
    if L % m:
        equal = x[..., : m * step, :].reshape(*x.shape[:-2], m, step, x.shape[-1]).mean(-2)
        last = torch.cat(
            [equal[..., :-1, :], x[..., (m - 1) * step :, :].mean(-2, keepdim=True)], -2
        )
        padded = segment_means(x, torch.arange(L) // -(-L // m), m)
        rounded = (torch.arange(L) * m / L).round().long().clamp(max=m - 1)
        suspects += [
            ("wrong_segments", equal),
            ("wrong_segments", last),
            ("wrong_segments", padded),
            ("wrong_segments", segment_means(x, rounded, m)),
            ("nominal_segment_length", landmarks64(x, m) * counts / step),
        ]
    # t * L // m skips segments; counts clamped to 1 (the NaN's usual fix) leave them at 0
    skipping = segment_means(x, torch.arange(L) * L // m, m)
    return suspects + [
        ("segment_sums", landmarks64(x, m) * counts),
        ("empty_segments", skipping),
    ]


def segment_means(x: torch.Tensor, seg: torch.Tensor, m: int) -> torch.Tensor:
    """(..., m, D): the mean of the tokens with seg == i, for each i (0 where there are none)."""
    zero = x[..., :1, :].mean(-2) * 0
    return torch.stack(
        [x[..., seg == i, :].mean(-2) if (seg == i).any() else zero for i in range(m)], dim=-2
    )


# Z_0 = A^T / scale: the paper's scale and the usual wrong ones, each from the (..., n, n) batch
PINV_INITS = {
    "paper": lambda a: a.abs().sum(-2).amax(-1) * a.abs().sum(-1).amax(-1),
    "batch": lambda a: a.abs().sum(-2).amax() * a.abs().sum(-1).amax(),
    "none": lambda a: torch.ones(a.shape[:-2], dtype=a.dtype),
    "norm_1_squared": lambda a: a.abs().sum(-2).amax(-1) ** 2,
    "norm_inf_squared": lambda a: a.abs().sum(-1).amax(-1) ** 2,
    "signed_sums": lambda a: a.sum(-2).amax(-1) * a.sum(-1).amax(-1),
    "frobenius": lambda a: (a * a).sum((-2, -1)),
    "max_entry_squared": lambda a: a.abs().amax((-2, -1)) ** 2,
}


def pinv_step(a, z, eye, update: str):
    """One update of Z (the Nyströmformer's, or a wrong variant for the suspects)."""
    az = a @ z
    if update == "newton":
        return z @ (2 * eye - az)
    poly = 13 * eye - az @ (15 * eye - az @ (7 * eye - az))
    if update == "left":
        return 0.25 * poly @ z
    if update == "no_quarter":
        return z @ poly
    return 0.25 * z @ poly


def pinv64(
    a: torch.Tensor, iterations: int, init: str = "paper", update: str = "nystrom"
) -> torch.Tensor:
    """The Nyströmformer's iteration in float64 (or a wrong variant, for the suspects)."""
    a = a.double()
    eye = torch.eye(a.shape[-1], dtype=torch.float64)
    scale = PINV_INITS[init](a)
    z = a.transpose(-2, -1) / (scale[..., None, None] if scale.dim() else scale)
    if update == "stale":  # AZ computed once, before the loop
        az = a @ z
        for _ in range(iterations):
            z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
        return z
    for _ in range(iterations):
        z = pinv_step(a, z, eye, update)
    return z


def finite_suspects(pairs) -> list:
    """The (key, tensor) pairs whose tensor is finite: a diverging variant matches nothing."""
    return [(key, t) for key, t in pairs if torch.isfinite(t).all()]


def pinv_suspects(a: torch.Tensor, iterations: int, given: int = None) -> list:
    with torch.no_grad():
        s = [
            ("batch_wide_norms", pinv64(a, iterations, "batch")),
            ("wrong_pinv_update", pinv64(a, iterations, update="newton")),
            ("wrong_pinv_update", pinv64(a, 2 * iterations, update="newton")),
            ("unscaled_pinv_init", pinv64(a, iterations, "none")),
            *[
                ("wrong_pinv_scaling", pinv64(a, iterations, init))
                for init in (
                    "norm_1_squared",
                    "norm_inf_squared",
                    "signed_sums",
                    "frobenius",
                    "max_entry_squared",
                )
            ],
            ("pinv_factor_order", pinv64(a, iterations, update="left")),
            ("pinv_missing_quarter", pinv64(a, iterations, update="no_quarter")),
            ("pinv_stale_az", pinv64(a, iterations, update="stale")),
        ]
        if iterations == 0:
            s.append(("pinv_init_not_transposed", pinv64(a, 0).transpose(-2, -1)))
        if given is not None:
            # range(1, iterations) on iterations = 1 also runs 0 steps: one short, named first
            s += [("iterations_off_by_one", pinv64(a, n)) for n in (given - 1, given + 1) if n >= 0]
            s += [("ignores_iterations", pinv64(a, n)) for n in (6, 0) if n != given]
    return finite_suspects(s)


def divergence(iterative_pinv, a) -> Mistake:
    """The Mistake for an iteration that blows up, named from where it starts: Z_0 =
    iterative_pinv(a, 0) is A^T unscaled, A scaled but not transposed, right (then the update
    diverges), or scaled some other way."""
    z0 = iterative_pinv(a, 0)
    right = pinv64(a, 0)
    for key, start in [
        ("unscaled_pinv_init", a.transpose(-2, -1)),
        ("pinv_init_not_transposed", right.transpose(-2, -1)),
        ("pinv_update_diverges", right),
    ]:
        if (
            isinstance(z0, torch.Tensor)
            and z0.shape == a.shape
            and relative_error(z0, start) < 1e-6
        ):
            return named(key)
    return named("wrong_pinv_scaling")


def well_conditioned(rng, leading, n, dtype, scale=1.0) -> torch.Tensor:
    """Matrices U diag(s) W^T with singular values s in [1, 4] times `scale`."""
    u = torch.linalg.qr(randn((*leading, n, n), rng, torch.float64))[0]
    w = torch.linalg.qr(randn((*leading, n, n), rng, torch.float64))[0]
    s = 1 + 3 * torch.rand((*leading, n), generator=rng, dtype=torch.float64)
    return (scale * (u * s[..., None, :]) @ w.transpose(-2, -1)).to(dtype)


def nystrom64(
    q,
    k,
    v,
    m,
    iterations,
    landmark=landmarks64,
    scale=True,
    swap=(),
    pinv=None,
    key_landmarks="k",
    b_landmarks="q",
):
    """softmax(Q K~^T/sqrt d) pinv(softmax(Q~ K~^T/sqrt d)) softmax(Q~ K^T/sqrt d) V in float64;
    `swap` names kernels ('F', 'A', 'B') computed with their factors swapped, key_landmarks="q"
    takes K~ from q, b_landmarks="k" B's landmarks from k (suspects)."""
    q, k, v = q.double(), k.double(), v.double()
    s = q.shape[-1] ** -0.5 if scale else 1.0
    qt, kt = landmark(q, m), landmark(q if key_landmarks == "q" else k, m)
    f = (
        softmax64(kt @ q.transpose(-2, -1) * s).transpose(-2, -1)
        if "F" in swap
        else softmax64(q @ kt.transpose(-2, -1) * s)
    )
    a = (
        softmax64(kt @ qt.transpose(-2, -1) * s)
        if "A" in swap
        else softmax64(qt @ kt.transpose(-2, -1) * s)
    )
    bt = kt if b_landmarks == "k" else qt
    b = (
        softmax64(k @ bt.transpose(-2, -1) * s).transpose(-2, -1)
        if "B" in swap
        else softmax64(bt @ k.transpose(-2, -1) * s)
    )
    z = pinv(a) if pinv is not None else pinv64(a, iterations)
    return f @ (z @ (b @ v))


def nystrom_suspects(q, k, v, m, iterations) -> list:
    d = q.shape[-1]
    s = [
        ("kernel_missing_scale", nystrom64(q, k, v, m, iterations, scale=False)),
        ("kernel_scale_inverted", nystrom64(q * d, k, v, m, iterations)),  # scores * sqrt(d)
        ("key_landmarks_from_q", nystrom64(q, k, v, m, iterations, key_landmarks="q")),
        ("b_from_key_landmarks", nystrom64(q, k, v, m, iterations, b_landmarks="k")),
        # each kernel softmax(unscaled) * s: pinv(A s) = pinv(A) / s leaves one s in the output
        ("scale_after_softmax", nystrom64(q, k, v, m, iterations, scale=False) * d**-0.5),
        ("kernel_scale_of_m", nystrom64(q * (d / m) ** 0.5, k, v, m, iterations)),
        (
            "pinv_transposed",
            nystrom64(q, k, v, m, iterations, pinv=lambda a: pinv64(a, iterations).mT),
        ),
        (
            "pinv_skipped",
            nystrom64(q, k, v, m, iterations, pinv=lambda a: torch.eye(m, dtype=a.dtype)),
        ),
        ("pinv_skipped", nystrom64(q, k, v, m, iterations, pinv=lambda a: a)),  # A, not pinv(A)
        (
            "unscaled_pinv_init",
            nystrom64(q, k, v, m, iterations, pinv=lambda a: pinv64(a, iterations, "none")),
        ),
    ]
    s += [
        ("transposed_kernel", nystrom64(q, k, v, m, iterations, swap=sw))
        for sw in ("A", "B", "F", "FB", "FAB")
    ]
    s += [
        (
            "strided_landmarks",
            nystrom64(
                q,
                k,
                v,
                m,
                iterations,
                landmark=lambda x, n: x.double()[
                    ..., torch.tensor([(i * x.shape[-2] + n - 1) // n for i in range(n)]), :
                ],
            ),
        ),
        (
            "strided_landmarks",
            nystrom64(
                q,
                k,
                v,
                m,
                iterations,
                landmark=lambda x, n: x.double()[..., :: x.shape[-2] // n, :][..., :n, :],
            ),
        ),
    ]
    s += [("ignores_iterations", nystrom64(q, k, v, m, n)) for n in (6, 0) if n != iterations]
    s += [
        (
            "batch_wide_norms",
            nystrom64(q, k, v, m, iterations, pinv=lambda a: pinv64(a, iterations, "batch")),
        ),
        (
            "wrong_pinv_update",
            nystrom64(
                q, k, v, m, iterations, pinv=lambda a: pinv64(a, iterations, update="newton")
            ),
        ),
    ]
    return s


# landmarks


def uneven_segments(rng) -> tuple:
    """(m, L), L not a multiple of m, where segments of ceil(L / m) or floor(L / m) tokens (the
    rest added to the last) both differ from t * m // L: every draw exposes both mistakes."""
    while True:
        m = draw(rng, 2, 6)
        L = m * draw(rng, 2, 5) + draw(rng, 1, m - 1)
        right, t = segment_ids(L, m), torch.arange(L)
        ceil_sized, floor_sized = t // -(-L // m), (t // (L // m)).clamp(max=m - 1)
        if not torch.equal(ceil_sized, right) and not torch.equal(floor_sized, right):
            return m, L


def call_landmarks(landmarks, x, m):
    """landmarks(x, m), with a crash that only uneven segments cause named."""
    try:
        return landmarks(x, m)
    except Mistake as mistake:
        if mistake.key != "raised":
            raise
        if dtype_clash(mistake):
            raise named("new_tensor_dtype") from None
        L = x.shape[-2]
        if L % m and runs(lambda: landmarks(x[..., : L - L % m, :], m)):
            description, fix = HINTS["wrong_segments"]
            raise Mistake(
                f"landmarks(x, {m}) with L = {L} raised {type(mistake.__cause__).__name__} "
                f"({mistake.__cause__}), and works when m divides L: it looks like "
                f"{description}.",
                fix,
                "wrong_segments",
            ) from None
        raise


def lm_matches(landmarks, rng):
    """segment means, token t in segment t * m // L; L not a multiple of m; any leading dims"""
    for leading, dtype in [((2, 3), torch.float32), ((), torch.float64)]:
        m, L = uneven_segments(rng)
        x = randn((*leading, L, draw(rng, 2, 9)), rng, dtype)
        expect_close(
            call_landmarks(landmarks, x, m),
            landmarks64(x, m),
            dtype,
            f"landmarks(x, {m}) with x {tuple(x.shape)}",
            landmark_suspects(x, m),
            nonfinite=named("empty_segments"),
        )


def lm_vectorised(landmarks, rng):
    """no Python loop over tokens: the Python work does not grow with L"""
    x_short, x_long = randn((2, 64, 4), rng), randn((2, 2048, 4), rng)
    expect_flat_python_work(
        "landmarks",
        "token_loop",
        ("L = 64", lambda: landmarks(x_short, 4)),
        ("L = 2048", lambda: landmarks(x_long, 4)),
        slack=120,
    )


def lm_divisible_and_extremes(landmarks, rng):
    """L a multiple of m (equal segments); m = 1 (the mean of all tokens); m = L (x itself)"""
    m = draw(rng, 2, 6)
    L = m * draw(rng, 2, 5)
    x = randn((2, L, draw(rng, 2, 9)), rng)
    for n in (m, 1, L):
        expect_close(
            landmarks(x, n),
            landmarks64(x, n),
            x.dtype,
            f"landmarks(x, {n}) with x {tuple(x.shape)}",
            landmark_suspects(x, n),
            nonfinite=named("empty_segments"),
        )


def lm_bad_input(landmarks, rng):
    """num_landmarks < 1 or > L, and a 1-D x, raise ValueError"""
    L = draw(rng, 3, 9)
    x = randn((2, L, 4), rng)
    for what, call in [
        ("num_landmarks=0", lambda: landmarks(x, 0)),
        (f"num_landmarks={L + 1} > L = {L}", lambda: landmarks(x, L + 1)),
        ("a 1-D x", lambda: landmarks(x[0, :, 0], 2)),
    ]:
        expect_value_error(call, what, "no_error_for_bad_input")


# iterative_pinv


def call_pinv(iterative_pinv, a, iterations):
    """iterative_pinv(a, iterations), with a crash that only a batch of matrices causes named:
    a.T (which reverses every dim) where a.transpose(-2, -1) is meant."""
    try:  # z = a.mT; z /= c divides a itself: the oracle would then see another a
        return call_unchanged(iterative_pinv, {"a": a}, iterations)
    except Mistake as mistake:
        single = a.reshape(-1, *a.shape[-2:])[0]  # (n, n)
        if mistake.key == "raised" and runs(lambda: iterative_pinv(single, iterations)):
            raise named("fixed_rank") from None
        raise


def ip_iterates(iterative_pinv, rng):
    """Z_0 = A^T / (||A||_1 ||A||_inf) per matrix, then Z (13I - AZ (15I - AZ (7I - AZ))) / 4"""
    n = draw(rng, 2, 8)
    for dtype in (torch.float64, torch.float32):
        a = well_conditioned(
            rng,
            (2, 3),
            n,
            dtype,
            scale=0.5 + 3 * torch.rand((2, 3, 1, 1), generator=rng, dtype=torch.float64),
        )
        for iterations in (0, 1, draw(rng, 2, 3)):
            expect_close(
                call_pinv(iterative_pinv, a, iterations),
                pinv64(a, iterations),
                dtype,
                f"iterative_pinv(a, {iterations}) on {tuple(a.shape)} {dtype}",
                pinv_suspects(a, iterations, iterations),
                nonfinite=divergence(iterative_pinv, a),
            )


def ip_converges(iterative_pinv, rng):
    """converges to torch.linalg.pinv (float64, well-conditioned, 12 steps); the error falls"""
    n = draw(rng, 3, 12)
    a = well_conditioned(
        rng, (2,), n, torch.float64, scale=1 + 2 * torch.rand((), generator=rng).item()
    )
    ref = torch.linalg.pinv(a)
    errors = []
    for iterations in (1, 3, 12):
        out = call_pinv(iterative_pinv, a, iterations)
        expect_tensor(out, f"iterative_pinv(a, {iterations})", a.shape, a.dtype)
        if not torch.isfinite(out).all() or relative_error(out, ref) > 1e3:
            raise divergence(iterative_pinv, a)
        errors.append(relative_error(out, ref))
    if not (errors[0] > errors[1] > errors[2] and errors[2] < 1e-9):
        raise Mistake(
            f"relative error against torch.linalg.pinv after 1, 3, 12 steps: "
            f"{errors[0]:.1e}, {errors[1]:.1e}, {errors[2]:.1e} (expected falling, "
            f"below 1e-9 after 12).",
            HINTS["wrong_pinv_update"][1],
            "wrong_pinv_update",
        )


def ip_bad_input(iterative_pinv, rng):
    """a non-square or 1-D a, and iterations < 0, raise ValueError"""
    n = draw(rng, 2, 6)
    a = randn((n, n), rng)
    for what, call in [
        (f"a non-square ({n}, {n + 1}) a", lambda: iterative_pinv(randn((n, n + 1), rng), 3)),
        ("a 1-D a", lambda: iterative_pinv(a[0], 3)),
        ("iterations=-1", lambda: iterative_pinv(a, -1)),
    ]:
        expect_value_error(call, what, "no_error_for_bad_input")


# nystrom_attention


def ny_matches(nystrom_attention, rng):
    """equals F pinv_n(A) B V (float64 oracle): Lq != Lk, L not a multiple of m, any leading dims"""
    for leading, iterations in [((2, 2), draw(rng, 2, 5)), ((), 6)]:
        m = draw(rng, 2, 6)
        L = m * draw(rng, 2, 4) + draw(rng, 1, m - 1)
        q, k, v = inputs(rng, L, torch.float64, leading, lk=L + draw(rng, 1, 5))
        kw = {} if iterations == 6 else {"pinv_iterations": iterations}
        expect_close(
            nystrom_attention(q, k, v, m, **kw),
            nystrom64(q, k, v, m, iterations),
            q.dtype,
            f"nystrom_attention(q, k, v, {m}{''.join(f', {a}={b}' for a, b in kw.items())}) "
            f"with q {tuple(q.shape)}, k {tuple(k.shape)}",
            nystrom_suspects(q, k, v, m, iterations),
        )


def ny_float32(nystrom_attention, rng):
    """float32 in, float32 out, within 1e-4 of the float64 result"""
    m = draw(rng, 3, 8)
    L = m * draw(rng, 2, 6) + draw(rng, 0, m - 1)
    q, k, v = inputs(rng, L)
    what = f"nystrom_attention(q, k, v, {m}) on float32 q {tuple(q.shape)}"
    out = nystrom_attention(q, k, v, m)
    ref = nystrom64(q, k, v, m, 6)
    expect_tensor(out, what, ref.shape, torch.float32)
    error = relative_error(out, ref)
    if error > 1e-4:
        expect_close(out, ref, torch.float32, what, nystrom_suspects(q, k, v, m, 6))


def ny_full_when_m_is_L(nystrom_attention, rng):
    """with m = L every landmark is one token: softmax attention, up to 1e-8 (30 pinv steps)"""
    L = draw(rng, 3, 12)
    q, k, v = inputs(rng, L, torch.float64, (2,))
    full = softmax64(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5) @ v
    out = nystrom_attention(q, k, v, L, pinv_iterations=30)
    expect_tensor(out, f"nystrom_attention(q, k, v, {L}, pinv_iterations=30)", full.shape, q.dtype)
    error = relative_error(out, full)
    if error > 1e-8:
        expect_close(
            out,
            nystrom64(q, k, v, L, 30),
            q.dtype,
            f"nystrom_attention(q, k, v, {L}, pinv_iterations=30) with L = {L}",
            nystrom_suspects(q, k, v, L, 30),
        )
        raise Mistake(
            f"with m = L = {L} the result is {error:.1e} away from softmax attention.",
            HINTS["transposed_kernel"][1],
            "wrong_values",
        )


def ny_linear_memory(nystrom_attention, rng):
    """never allocates an (Lq, Lk)-sized tensor (L = 4096, m = 32): O(L m) memory"""
    L, m = 4096, 32
    q, k, v = (randn((1, 1, L, 8), rng) for _ in range(3))
    largest, shape = largest_allocation(lambda: nystrom_attention(q, k, v, m))
    if largest >= L * L:
        description, hint = HINTS["full_attention_matrix"]
        raise Mistake(
            f"nystrom_attention allocated a tensor of shape {shape} for L = {L}, "
            f"m = {m}: it looks like {description}.",
            hint,
            "full_attention_matrix",
        )


def ny_bad_input(nystrom_attention, rng):
    """mismatched shapes, num_landmarks < 1 or > L, raise ValueError"""
    bad_inputs(lambda q, k, v: nystrom_attention(q, k, v, 2), rng, causal=False)
    L = draw(rng, 4, 9)
    q, k, v = inputs(rng, L, leading=(2,))
    expect_value_error(
        lambda: nystrom_attention(q, k, v, 0), "num_landmarks=0", "no_error_for_bad_input"
    )
    expect_value_error(
        lambda: nystrom_attention(q, k, v, L + 1),
        f"num_landmarks={L + 1} > L = {L}",
        "no_error_for_bad_input",
    )
