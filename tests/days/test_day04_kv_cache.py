"""The day04 check suite, tested: the solution passes on every seed, each planted bug is caught
with its named hint, correct implementations written differently pass too."""

import functools
import math

import pytest
import torch

import course.reference.kv_cache as library
from grader.suites.day04_kv_cache import EXERCISES as SUITE
from helpers import (
    assert_mistake_named,
    assert_named_on_seeds,
    assert_promise_kept,
    day_report,
    edited_solution,
    promised,
)

DAY = "day04-kv-cache"

# For tests/test_nbgrader_e2e.py: a cache that never advances costs KVCache's 2 + 1 points.
PLANTED_SUBMISSION = {
    "cell": "KVCache",
    "old": "self.seq_len = stop",
    "new": "pass",
    "points_lost": 3,
    "hint": "after writing L_new positions, set self.seq_len += L_new (a plain int).",
}

report = functools.partial(day_report, DAY)
assert_named = functools.partial(assert_mistake_named, DAY)


def stub(*args, **kwargs):
    raise NotImplementedError()


# ----------------------------------------------------------------------------- KVCache bugs


def cache_class(solution, **bugs):
    """The solution's KVCache with one method replaced."""
    return type("KVCache", (solution["KVCache"],), bugs)


def not_advanced(self, k_new, v_new):
    n = k_new.shape[-2]
    self.k[:, :, self.seq_len : self.seq_len + n] = k_new
    self.v[:, :, self.seq_len : self.seq_len + n] = v_new
    return self.k[:, :, : self.seq_len + n], self.v[:, :, : self.seq_len + n]


def at_zero(self, k_new, v_new):
    n = k_new.shape[-2]
    self.k[:, :, :n], self.v[:, :, :n] = k_new, v_new
    self.seq_len += n
    return self.k[:, :, : self.seq_len], self.v[:, :, : self.seq_len]


def whole_buffer(self, k_new, v_new):
    n, s = k_new.shape[-2], self.seq_len
    self.k[:, :, s : s + n], self.v[:, :, s : s + n] = k_new, v_new
    self.seq_len += n
    return self.k, self.v


def no_checks(self, k_new, v_new):
    n, s = k_new.shape[-2], self.seq_len
    self.k[:, :, s : s + n] = k_new[:, :, : self.max_seq_len - s]
    self.v[:, :, s : s + n] = v_new[:, :, : self.max_seq_len - s]
    self.seq_len = min(s + n, self.max_seq_len)
    return self.k[:, :, : self.seq_len], self.v[:, :, : self.seq_len]


def keep_length(self):
    pass


@pytest.mark.parametrize(
    "bug, key",
    [
        ({"update": not_advanced}, "not_advanced"),
        ({"update": at_zero}, "writes_at_zero"),
        ({"update": whole_buffer}, "whole_buffer"),
        ({"update": no_checks}, "no_error_for_bad_update"),
        ({"reset": keep_length}, "reset_keeps_length"),
    ],
    ids=["not_advanced", "at_zero", "whole_buffer", "no_errors", "reset"],
)
def test_kv_cache_bug_is_named(solution, bug, key, capsys):
    assert_named("KVCache", cache_class(solution, **bug), key, capsys)


def test_kv_cache_with_cat_is_not_preallocated(capsys):
    class CatCache:
        def __init__(self, B, H, D, max_len, dtype=torch.float32, device=None):
            self.k = self.v = None
            self.seq_len = 0

        def update(self, k, v):
            self.k = k if self.k is None else torch.cat([self.k, k], -2)
            self.v = v if self.v is None else torch.cat([self.v, v], -2)
            self.seq_len = self.k.shape[-2]
            return self.k, self.v

    assert_named("KVCache", CatCache, "not_preallocated", capsys)


def test_kv_cache_library_is_a_shortcut():
    assert report("KVCache", library.KVCache).keys == {"shortcut"}


# ----------------------------------------------------------------------------- cached_attention bugs


def make_attention(top_left=False, causal=True, scale=True):
    def cached_attention(q, k, v):
        lq, lk = q.shape[-2], k.shape[-2]
        offset = 0 if top_left else lk - lq
        allowed = torch.arange(lk) <= torch.arange(lq).unsqueeze(-1) + offset
        s = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1.0)
        if causal:
            s = s.masked_fill(~allowed, float("-inf"))
        return torch.softmax(s, -1) @ v

    return cached_attention


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_attention(top_left=True), "top_left_causal"),
        (make_attention(causal=False), "no_causal_mask"),
        (make_attention(scale=False), "missing_scale"),
        (lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v), "shortcut"),
        (stub, "not_implemented"),
    ],
    ids=["top_left", "no_causal", "no_scale", "sdpa", "stub"],
)
def test_cached_attention_bug_is_named(bug, key, capsys):
    assert_named("cached_attention", bug, key, capsys)


# ----------------------------------------------------------------------------- generate bugs


@torch.no_grad()
def no_cache_always(model, prompt_ids, n, use_cache=True):
    ids = prompt_ids
    if use_cache:  # the bug: caches made, then never passed to the model
        model.init_caches(ids.shape[0], ids.shape[1] + n)
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


@torch.no_grad()
def only_new(model, prompt_ids, n, use_cache=True):
    ids = prompt_ids
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    return ids[:, prompt_ids.shape[1] :]


@torch.no_grad()
def first_position(model, prompt_ids, n, use_cache=True):
    ids = prompt_ids
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, 0].argmax(-1, keepdim=True)], 1)
    return ids


@pytest.mark.parametrize(
    "bug, key",
    [
        (no_cache_always, "cache_unused"),
        (only_new, "generate_without_prompt"),
        (first_position, "argmax_first_position"),
        (lambda m, p, n, use_cache=True: library.generate(m, p, n, use_cache), "shortcut"),
        (stub, "not_implemented"),
    ],
    ids=["cache_unused", "only_new", "first_position", "library", "stub"],
)
def test_generate_bug_is_named(bug, key, capsys):
    assert_named("generate", bug, key, capsys)


# ----------------------------------------------------------------------------- kv_cache_bytes bugs


@pytest.mark.parametrize(
    "bug, key",
    [
        (lambda l, h, d, s, b, dtype: 2 * l * h * d * s * b * 4, "wrong_element_size"),
        (
            lambda l, h, d, s, b, dtype: (
                l * h * d * s * b * torch.empty((), dtype=dtype).element_size()
            ),
            "forgot_k_and_v",
        ),
        (stub, "not_implemented"),
    ],
    ids=["four_bytes", "k_only", "stub"],
)
def test_kv_cache_bytes_bug_is_named(bug, key, capsys):
    assert_named("kv_cache_bytes", bug, key, capsys)


# ----------------------------------------------------------------------------- RollingKVCache bugs


def relative_positions(solution):
    class Rolling(solution["RollingKVCache"]):
        def update(self, k_new, v_new):
            k, v, positions = super().update(k_new, v_new)
            return k, v, positions - positions[0]

    return Rolling


def slot_positions(solution):
    class Rolling(solution["RollingKVCache"]):
        def update(self, k_new, v_new):
            k, v, positions = super().update(k_new, v_new)
            return k, v, positions % self.window

    return Rolling


class Unbounded:
    def __init__(self, B, H, D, window, dtype=torch.float32, device=None):
        self.window, self.k, self.v, self.seq_len = (
            window,
            torch.zeros(B, H, 0, D),
            torch.zeros(B, H, 0, D),
            0,
        )

    def update(self, k_new, v_new):
        self.k, self.v = torch.cat([self.k, k_new], -2), torch.cat([self.v, v_new], -2)
        start = self.seq_len
        self.seq_len += k_new.shape[-2]
        first = max(0, start - self.window + 1)
        return self.k[:, :, first:], self.v[:, :, first:], torch.arange(first, self.seq_len)


@pytest.mark.parametrize(
    "make, key",
    [
        (relative_positions, "positions_not_absolute"),
        (slot_positions, "positions_not_absolute"),
        (lambda solution: Unbounded, "rolling_not_bounded"),
    ],
    ids=["relative", "slots", "unbounded"],
)
def test_rolling_bug_is_named(solution, make, key, capsys):
    assert_named("RollingKVCache", make(solution), key, capsys)


# ----------------------------------------------------------------------------- PagedKVCache bugs


def paged_class(solution, **bugs):
    """The solution's PagedKVCache with one method replaced."""
    return type("PagedKVCache", (solution["PagedKVCache"],), bugs)


def allocate_floor(self, seq_id, k_new, v_new):
    table = self.block_tables.setdefault(seq_id, [])
    start = self.lengths.get(seq_id, 0)
    stop = start + k_new.shape[1]
    table.extend(self.free.pop() for _ in range(stop // self.block_size - len(table)))  # floor
    for position in range(start, stop):
        block = table[position // self.block_size]
        self.k[block, :, position % self.block_size] = k_new[:, position - start]
        self.v[block, :, position % self.block_size] = v_new[:, position - start]
    self.lengths[seq_id] = stop
    return self.gather(seq_id)


def allocate_one_extra(self, seq_id, k_new, v_new):
    table = self.block_tables.setdefault(seq_id, [])
    start = self.lengths.get(seq_id, 0)
    stop = start + k_new.shape[1]
    needed = stop // self.block_size + 1  # one block too many when stop fills its last block
    if needed - len(table) > len(self.free):
        raise ValueError("pool full")
    table.extend(self.free.pop() for _ in range(needed - len(table)))
    return allocate_floor(self, seq_id, k_new, v_new)


def gather_uncropped(self, seq_id):
    table = self.block_tables[seq_id]
    return (
        torch.cat([self.k[b] for b in table], dim=1),
        torch.cat([self.v[b] for b in table], dim=1),
    )


def gather_reversed(self, seq_id):
    table, length = self.block_tables[seq_id][::-1], self.lengths[seq_id]
    return (
        torch.cat([self.k[b] for b in table], dim=1)[:, :length],
        torch.cat([self.v[b] for b in table], dim=1)[:, :length],
    )


def free_forgets_blocks(self, seq_id):
    self.block_tables.pop(seq_id)
    del self.lengths[seq_id]


def share_first_block(self, seq_id, k_new, v_new):
    if seq_id not in self.block_tables and self.block_tables:
        self.block_tables[seq_id] = [next(iter(self.block_tables.values()))[0]]
    return solution_update(self, seq_id, k_new, v_new)


solution_update = None  # set by the fixture below, so the bugs can call the real update


@pytest.fixture
def paged_bugs(solution):
    global solution_update
    solution_update = solution["PagedKVCache"].update
    yield


@pytest.mark.parametrize(
    "bug, key",
    [
        ({"update": allocate_floor}, "block_table_off_by_one"),
        ({"update": allocate_one_extra}, "block_table_off_by_one"),
        ({"gather": gather_uncropped}, "gather_not_cropped"),
        ({"gather": gather_reversed}, "wrong_block_for_position"),
        ({"free_sequence": free_forgets_blocks}, "blocks_not_freed"),
        ({"update": share_first_block}, "blocks_shared"),
    ],
    ids=["floor", "one_extra", "uncropped", "reversed_table", "free_forgets", "shared"],
)
def test_paged_bug_is_named(solution, paged_bugs, bug, key, capsys):
    assert_named("PagedKVCache", paged_class(solution, **bug), key, capsys)


def test_paged_library_is_a_shortcut():
    assert report("PagedKVCache", library.PagedKVCache).keys == {"shortcut"}


# ----------------------------------------------------------------------------- other correct answers


def test_library_functions_pass_without_the_guard(monkeypatch):
    from grader.harness.checking import run

    monkeypatch.setattr("grader.harness.checking.course_references", lambda exercise: {})
    from grader.suites.day04_kv_cache import EXERCISES as SUITE

    # (the classes' methods are guarded by the suite itself, so only the functions run here)
    impls = {
        "kv_cache_bytes": library.kv_cache_bytes,
        "generate": library.generate,
        "cached_attention": lambda q, k, v: library.cached_attention(q, k, v)[0],
    }
    for name, impl in impls.items():
        for seed in range(3):
            result = run(name, impl, SUITE[name].checks, {}, seed=seed, verbose=False)
            assert result.passed, (
                name,
                [(r.check, r.message) for r in result.results if not r.passed],
            )


# ----------------------------------------------------------------------------- beginner mistakes

# The beginner pass's mistakes (issue #18), each planted in the solution's own code and named on
# the visible seed and on hidden ones; then the unusual correct answers it tried.
HIDDEN_SEEDS = (1, 2)


def assert_named_on_every_seed(name: str, bug, key: str, capsys) -> None:
    assert_named_on_seeds(DAY, name, bug, key, capsys, HIDDEN_SEEDS)


def planted(solution, cell: str, *edits):
    return edited_solution(DAY, solution, cell, edits)


BEGINNER_BUGS = [
    # (exercise, the cell its code is in, key, edits)
    ("KVCache", "KVCache", "not_advanced", [("        self.seq_len = stop\n", "")]),
    (
        "KVCache",
        "KVCache",
        "writes_at_wrong_offset",  # seq_len advanced before the write: one slot late
        [
            ("self.k[:, :, start:stop] = k_new", "self.k[:, :, stop - 1 : stop - 1 + n] = k_new"),
            ("self.v[:, :, start:stop] = v_new", "self.v[:, :, stop - 1 : stop - 1 + n] = v_new"),
        ],
    ),
    (
        "KVCache",
        "KVCache",
        "prefix_wrong_length",
        [("return self.k[:, :, :stop]", "return self.k[:, :, :stop + 1]")],
    ),
    (
        "KVCache",
        "KVCache",
        "v_gets_k",
        [("self.v[:, :, start:stop] = v_new", "self.v[:, :, start:stop] = k_new")],
    ),
    (
        "KVCache",
        "KVCache",
        "no_error_for_bad_update",  # the device unchecked: a 'meta' k_new is written
        [(" or k_new.device != self.device", "")],
    ),
    (
        "cached_attention",
        "cached_attention",
        "mask_hides_every_key",
        [
            (
                "torch.arange(lk - lq, lk, device=q.device)",
                "torch.arange(lq - lk, 2 * lq - lk, device=q.device)",
            )
        ],
    ),
    (
        "cached_attention",
        "cached_attention",
        "excludes_diagonal",
        [
            (
                "torch.arange(lk, device=q.device) <= query_pos",
                "torch.arange(lk, device=q.device) < query_pos",
            )
        ],
    ),
    (
        "cached_attention",
        "cached_attention",
        "softmax_over_queries",
        [("torch.softmax(scores, dim=-1)", "torch.softmax(scores, dim=-2)")],
    ),
    (
        "cached_attention",
        "cached_attention",
        "batched_transpose",
        [("q @ k.transpose(-2, -1)", "q @ k.T")],
    ),
    (
        "cached_attention",
        "cached_attention",
        "float16_overflow",  # a -1e9 fill: masked_fill refuses it in float16
        [('scores.masked_fill(~allowed, float("-inf"))', "scores.masked_fill(~allowed, -1e9)")],
    ),
    (
        "RollingKVCache",
        "RollingKVCache",
        "rolling_duplicate_slots",  # every new position stored, two in one slot when n > window
        [("stay = positions[-self.window:]", "stay = positions[len(kept):]")],
    ),
    (
        "generate",
        "generate",
        "cache_used_when_off",
        [("    if not use_cache:\n", "    if False:\n")],
    ),
    (
        "generate",
        "generate",
        "decode_without_caches",
        [("logits = model(next_id, caches)", "logits = model(next_id)")],
    ),
    (
        "generate",
        "generate",
        "argmax_without_keepdim",
        [
            (
                "next_id = logits[:, -1].argmax(-1, keepdim=True)",
                "next_id = logits[:, -1].argmax(-1)",
            )
        ],
    ),
    (
        "generate",
        "generate",
        "caches_too_small",
        [
            (
                "model.init_caches(ids.shape[0], ids.shape[1] + max_new_tokens)",
                "model.init_caches(ids.shape[0], ids.shape[1])",
            )
        ],
    ),
    (
        "RollingKVCache",
        "RollingKVCache",
        "rolling_wrong_order",
        [("        return k, v, positions\n", "        return positions, k, v\n")],
    ),
    (
        "PagedKVCache",
        "PagedKVCache",
        "blocks_leaked_on_error",  # blocks taken one by one, the ValueError after them
        [
            ("table.extend(self.free.pop() for _ in range(missing))", "pass"),
            (
                "        if missing > len(self.free):\n",
                "        table.extend(self.free.pop() for _ in range(min(missing, len(self.free))))\n"
                "        if len(table) < -(-stop // self.block_size):\n",
            ),
        ],
    ),
    (
        "PagedKVCache",
        "PagedKVCache",
        "k_new_axes_swapped",  # k_new read as (L_new, H, D)
        [
            ("= k_new[:, position - start]", "= k_new[position - start]"),
            ("= v_new[:, position - start]", "= v_new[position - start]"),
        ],
    ),
    (
        "PagedKVCache",
        "PagedKVCache",
        "pool_written_from_its_own_view",  # edits a flat reshape of the pool, copies it back
        [
            (
                "        for position in range(start, stop):\n",
                "        bs, (_, H, _, D) = self.block_size, self.k.shape\n"
                "        flat_k = self.k.permute(1, 0, 2, 3).reshape(H, -1, D)\n"
                "        flat_v = self.v.permute(1, 0, 2, 3).reshape(H, -1, D)\n"
                "        for position in range(start, stop):\n",
            ),
            (
                "self.k[block, :, offset] = k_new[:, position - start]",
                "flat_k[:, block * bs + offset] = k_new[:, position - start]",
            ),
            (
                "self.v[block, :, offset] = v_new[:, position - start]",
                "flat_v[:, block * bs + offset] = v_new[:, position - start]",
            ),
            (
                "        self.lengths[seq_id] = stop\n",
                "        self.k.copy_(flat_k.reshape(H, -1, bs, D).permute(1, 0, 2, 3))\n"
                "        self.v.copy_(flat_v.reshape(H, -1, bs, D).permute(1, 0, 2, 3))\n"
                "        self.lengths[seq_id] = stop\n",
            ),
        ],
    ),
    (
        "PagedKVCache",
        "PagedKVCache",
        "free_keeps_length",
        [("        del self.lengths[seq_id]\n", "")],
    ),
    (
        "PagedKVCache",
        "PagedKVCache",
        "free_keeps_table",
        [
            (
                "self.free.extend(self.block_tables.pop(seq_id))",
                "self.free.extend(self.block_tables[seq_id])",
            )
        ],
    ),
    (
        "PagedKVCache",
        "PagedKVCache",
        "blocks_shared",
        [
            (
                "table.extend(self.free.pop() for _ in range(missing))",
                "table.extend(self.free[:missing])",
            )
        ],
    ),
    # An input changed in place: the caller's keys or queries are lost (once wrong code passed).
    (
        "KVCache",
        "KVCache",
        "modified_input",
        [("self.k[:, :, start:stop] = k_new", "self.k[:, :, start:stop] = k_new.mul_(1.5)")],
    ),
    (
        "KVCache",
        "KVCache",
        "modified_input",  # the input zeroed after the write: once named a write one slot late
        [("        self.seq_len = stop\n", "        k_new.zero_()\n        self.seq_len = stop\n")],
    ),
    (
        "cached_attention",
        "cached_attention",
        "modified_input",
        [
            (
                "scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])",
                "scores = q.div_(math.sqrt(q.shape[-1])) @ k.transpose(-2, -1)",
            )
        ],
    ),
    (
        "RollingKVCache",
        "RollingKVCache",
        "modified_input",
        [
            (
                "        self.seq_len = start + n\n",
                "        k_new.mul_(2)\n        self.seq_len = start + n\n",
            )
        ],
    ),
    # The inverted mask, each way a beginner writes it: once told an offset of the wrong sign.
    (
        "cached_attention",
        "cached_attention",
        "mask_inverted",  # -inf fill: the last query sees no key, NaN
        [
            (
                "torch.arange(lk, device=q.device) <= query_pos",
                "torch.arange(lk, device=q.device) > query_pos",
            )
        ],
    ),
    (
        "cached_attention",
        "cached_attention",
        "mask_inverted",  # finfo.min fill: the last query averages every value
        [
            (
                "torch.arange(lk, device=q.device) <= query_pos",
                "torch.arange(lk, device=q.device) > query_pos",
            ),
            ('float("-inf")', "torch.finfo(q.dtype).min"),
        ],
    ),
    (
        "cached_attention",
        "cached_attention",
        "mask_inverted",  # its own position kept: no NaN
        [
            (
                "torch.arange(lk, device=q.device) <= query_pos",
                "torch.arange(lk, device=q.device) >= query_pos",
            )
        ],
    ),
    # The scale and the values slipped: once "no known mistake".
    (
        "cached_attention",
        "cached_attention",
        "divided_by_d",
        [("/ math.sqrt(q.shape[-1])", "/ q.shape[-1]")],
    ),
    (
        "cached_attention",
        "cached_attention",
        "scaled_by_length",
        [("/ math.sqrt(q.shape[-1])", "/ math.sqrt(k.shape[-2])")],
    ),
    (
        "cached_attention",
        "cached_attention",
        "weights_times_k",
        [("torch.softmax(scores, dim=-1) @ v", "torch.softmax(scores, dim=-1) @ k")],
    ),
    (
        "generate",
        "generate",
        "cache_unused",  # the whole sequence fed with the caches: once told the caches too short
        [("logits = model(next_id, caches)", "logits = model(ids, caches)")],
    ),
    (
        "PagedKVCache",
        "PagedKVCache",
        "v_gets_k",  # once told a wrong block or offset
        [
            (
                "self.v[block, :, offset] = v_new[:, position - start]",
                "self.v[block, :, offset] = k_new[:, position - start]",
            )
        ],
    ),
    (
        "RollingKVCache",
        "RollingKVCache",
        "rolling_wrong_order",  # (k, positions, v): once a tensor dump and a hint about slots
        [("        return k, v, positions\n", "        return k, positions, v\n")],
    ),
    (
        "KVCache",
        "KVCache",
        "not_advanced",  # seq_len a 0-d tensor, not the int the docstring asks for
        [
            (
                "        self.seq_len = 0\n        ### END SOLUTION\n\n    def update",
                "        self.seq_len = torch.tensor(0)\n        ### END SOLUTION\n\n    def update",
            )
        ],
    ),
]


@pytest.mark.parametrize(
    "name, cell, key, edits",
    BEGINNER_BUGS,
    ids=[f"{name}-{key}" for name, _, key, _ in BEGINNER_BUGS],
)
def test_beginner_mistake_is_named(solution, name, cell, key, edits, capsys):
    assert_named_on_every_seed(name, planted(solution, cell, *edits), key, capsys)


def test_seq_len_never_set_is_told_missing(solution, capsys):
    unset = planted(
        solution,
        "KVCache",
        ("        self.seq_len = 0\n        ### END SOLUTION\n\n    def update", "    def update"),
    )
    assert_named_on_every_seed("KVCache", unset, "seq_len_not_set", capsys)
    for seed in (0, *HIDDEN_SEEDS):  # every check says so, none reads the bare AttributeError
        result = report("KVCache", unset, hidden=seed > 0, seed=seed)
        assert {r.key for r in result.results if not r.passed} == {"seq_len_not_set"}


def test_sampling_instead_of_argmax_is_named(solution, capsys):
    sample = "torch.multinomial(torch.softmax({}[:, -1], dim=-1), 1)"
    sampled = planted(
        solution,
        "generate",
        ("model(ids)[:, -1].argmax(-1, keepdim=True)", sample.format("model(ids)")),
        ("logits[:, -1].argmax(-1, keepdim=True)", sample.format("logits")),
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the planted bug draws from torch's global generator
        assert_named_on_every_seed("generate", sampled, "next_token_not_argmax", capsys)


def bytes_without(factor: str):
    def kv_cache_bytes(num_layers, num_kv_heads, head_dim, seq_len, batch_size, dtype):
        sizes = dict(num_layers=num_layers, num_kv_heads=num_kv_heads, head_dim=head_dim)
        sizes.update(seq_len=seq_len, batch_size=batch_size)
        sizes[factor] = 1
        return 2 * math.prod(sizes.values()) * torch.empty((), dtype=dtype).element_size()

    return kv_cache_bytes


@pytest.mark.parametrize(
    "bug, key",
    [
        (bytes_without("batch_size"), "missing_factor"),  # once named as K or V only
        (bytes_without("num_layers"), "missing_factor"),
        (lambda *args: bytes_without("none")(*args) * 8, "bits_not_bytes"),
        (lambda *args: bytes_without("none")(*args) / 2**30, "wrong_unit"),
        (
            lambda l, h, d, s, b, dtype: 2 * l * h * d * s * b * torch.finfo(dtype).bits // 8,
            "element_size_by_hand",
        ),
    ],
    ids=["no_batch", "no_layers", "bits", "gib", "finfo"],
)
def test_beginner_bytes_mistake_is_named(bug, key, capsys):
    assert_named_on_every_seed("kv_cache_bytes", bug, key, capsys)


@pytest.mark.parametrize("name", list(SUITE))
def test_solution_passes_visible_and_hidden_seeds(solution, name):
    for seed in (0, *HIDDEN_SEEDS, 3, 4):
        result = report(name, solution[name], hidden=seed > 0, seed=seed)
        assert result.passed, [(r.check, r.message) for r in result.results if not r.passed]


class NarrowCopyCache:
    """A KVCache written with narrow().copy_() and seq_len kept as a read-only property."""

    def __init__(
        self, batch_size, num_heads, head_dim, max_seq_len, dtype=torch.float32, device=None
    ):
        self.shape, self.dtype = (batch_size, num_heads, head_dim), dtype
        self.device = torch.device("cpu" if device is None else device)
        self.k = torch.zeros(
            batch_size, num_heads, max_seq_len, head_dim, dtype=dtype, device=device
        )
        self.v = torch.zeros_like(self.k)
        self._length = 0

    @property
    def seq_len(self):
        return self._length

    def update(self, k_new, v_new):
        B, H, n, D = k_new.shape
        if (B, H, D) != self.shape or k_new.dtype != self.dtype or k_new.device != self.device:
            raise ValueError(f"k_new {tuple(k_new.shape)} {k_new.dtype} does not fit the cache")
        if self._length + n > self.k.shape[2]:
            raise ValueError("overflow")
        self.k.narrow(2, self._length, n).copy_(k_new)
        self.v.narrow(2, self._length, n).copy_(v_new)
        self._length += n
        return self.k[:, :, : self._length], self.v[:, :, : self._length]

    def get_seq_length(self):
        return self._length

    def reset(self):
        self._length = 0


def test_a_different_correct_kv_cache_passes():
    for seed in (0, *HIDDEN_SEEDS):
        assert report("KVCache", NarrowCopyCache, hidden=seed > 0, seed=seed).passed


def chronological_ring(solution):
    """A RollingKVCache whose ring keeps the window in time order (shift and copy)."""

    class Rolling(solution["RollingKVCache"]):
        def update(self, k_new, v_new):
            start, n, w = self.seq_len, k_new.shape[-2], self.window
            kept = min(start, w - 1)  # the old positions still in the window
            k = torch.cat([self.k[:, :, w - kept :], k_new], dim=-2) if kept else k_new
            v = torch.cat([self.v[:, :, w - kept :], v_new], dim=-2) if kept else v_new
            self.k.copy_(torch.cat([self.k, k_new], -2)[:, :, -w:])
            self.v.copy_(torch.cat([self.v, v_new], -2)[:, :, -w:])
            self.seq_len = start + n
            return k, v, torch.arange(start - kept, start + n)

    return Rolling


def own_softmax_attention(q, k, v):
    """cached_attention with its own softmax, every step in q's dtype (float16 too)."""
    lq, lk = q.shape[-2], k.shape[-2]
    allowed = torch.arange(lk) <= torch.arange(lk - lq, lk).unsqueeze(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = torch.where(allowed, scores, torch.tensor(float("-inf"), dtype=scores.dtype))
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    return weights / weights.sum(-1, keepdim=True) @ v


def dtype_min_bias_attention(q, k, v):
    """cached_attention with an additive bias of the dtype's minimum (day 2's mask)."""
    lq, lk = q.shape[-2], k.shape[-2]
    blocked = torch.arange(lk) > torch.arange(lk - lq, lk).unsqueeze(-1)
    bias = torch.zeros(lq, lk, dtype=q.dtype).masked_fill(blocked, torch.finfo(q.dtype).min)
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias, -1) @ v


@pytest.mark.parametrize("impl", [own_softmax_attention, dtype_min_bias_attention])
def test_other_correct_cached_attentions_pass_in_float16_too(impl):
    for seed in (0, *HIDDEN_SEEDS):
        result = report("cached_attention", impl, hidden=seed > 0, seed=seed)
        assert result.passed, [(r.check, r.message) for r in result.results if not r.passed]


def token_by_token_ring(solution):
    """A RollingKVCache that stores every new position, one assignment each: a later position
    overwrites an earlier one in program order, so n > window is fine."""

    class Rolling(solution["RollingKVCache"]):
        def update(self, k_new, v_new):
            start, n, w = self.seq_len, k_new.shape[-2], self.window
            kept = torch.arange(max(0, start - w + 1), start)
            k = torch.cat([self.k[:, :, kept % w], k_new], dim=-2)
            v = torch.cat([self.v[:, :, kept % w], v_new], dim=-2)
            for t in range(n):
                self.k[:, :, (start + t) % w] = k_new[:, :, t]
                self.v[:, :, (start + t) % w] = v_new[:, :, t]
            self.seq_len = start + n
            return k, v, torch.cat([kept, torch.arange(start, start + n)])

    return Rolling


@pytest.mark.parametrize("make", [chronological_ring, token_by_token_ring])
def test_other_correct_rings_pass(solution, make):
    for seed in (0, *HIDDEN_SEEDS):
        assert report("RollingKVCache", make(solution), hidden=seed > 0, seed=seed).passed


# ----------------------------------------------------------------------------- a second beginner pass

# Issue #18's second recorded pass (attempts exN_mK, exN_uK of exercise N): each mistake not tested
# above, planted in the solution's code and named on every seed; then its correct alternatives.
SECOND_PASS_BUGS = [
    # (attempt, exercise, key, edits): each exercise's code is in the cell of its name
    (
        "ex1_m2",  # seq_len advanced before the write
        "KVCache",
        "writes_at_wrong_offset",
        [
            ("self.k[:, :, start:stop] = k_new", "self.k[:, :, stop : stop + n] = k_new"),
            ("self.v[:, :, start:stop] = v_new", "self.v[:, :, stop : stop + n] = v_new"),
        ],
    ),
    (
        "ex1_m5",  # the dtype unchecked
        "KVCache",
        "no_error_for_bad_update",
        [("k_new.dtype != self.dtype or v_new.dtype != self.dtype or ", "")],
    ),
    (
        "ex1_m7",  # an overflow by one position accepted
        "KVCache",
        "no_error_for_bad_update",
        [("if stop > self.max_seq_len:", "if stop > self.max_seq_len + 1:")],
    ),
    (
        "ex1_m8",
        "KVCache",
        "not_preallocated",  # copies returned, not views
        [
            (
                "return self.k[:, :, :stop], self.v[:, :, :stop]",
                "return self.k[:, :, :stop].clone(), self.v[:, :, :stop].clone()",
            )
        ],
    ),
    (
        "ex1_m12",  # the batch size unchecked
        "KVCache",
        "no_error_for_bad_update",
        [
            (
                "(B, H, D) != (self.batch_size, self.num_heads, self.head_dim)",
                "(H, D) != (self.num_heads, self.head_dim)",
            )
        ],
    ),
    (
        "ex1_m13",  # buffers made without dtype=: float32 whatever the cache's dtype
        "KVCache",
        "not_preallocated",
        [
            ("self.k = torch.zeros(shape, dtype=dtype, ", "self.k = torch.zeros(shape, "),
            ("self.v = torch.zeros(shape, dtype=dtype, ", "self.v = torch.zeros(shape, "),
        ],
    ),
    (
        "ex1_m14",  # buffers laid out (B, max_seq_len, H, D), transposed on the way in and out
        "KVCache",
        "not_preallocated",
        [
            (
                "shape = (batch_size, num_heads, max_seq_len, head_dim)",
                "shape = (batch_size, max_seq_len, num_heads, head_dim)",
            ),
            ("self.k[:, :, start:stop] = k_new", "self.k[:, start:stop] = k_new.transpose(1, 2)"),
            ("self.v[:, :, start:stop] = v_new", "self.v[:, start:stop] = v_new.transpose(1, 2)"),
            (
                "return self.k[:, :, :stop], self.v[:, :, :stop]",
                "return self.k[:, :stop].transpose(1, 2), self.v[:, :stop].transpose(1, 2)",
            ),
        ],
    ),
    (
        "ex2_m8",  # computed in float32, never cast back
        "cached_attention",
        "wrong_dtype",
        [
            ("q @ k.transpose(-2, -1)", "q.float() @ k.float().transpose(-2, -1)"),
            ("torch.softmax(scores, dim=-1) @ v", "torch.softmax(scores, dim=-1) @ v.float()"),
        ],
    ),
    (
        "ex2_m9",
        "cached_attention",
        "transposed_wrong_dims",
        [("q @ k.transpose(-2, -1)", "q @ k.transpose(-1, -3)")],
    ),
    (
        "ex2_m14",  # i a row and j a column: the mask transposed, so inverted on square inputs
        "cached_attention",
        "mask_inverted",
        [
            (
                "torch.arange(lk - lq, lk, device=q.device).unsqueeze(-1)",
                "torch.arange(lk - lq, lk, device=q.device)",
            ),
            (
                "torch.arange(lk, device=q.device) <= query_pos",
                "torch.arange(lk, device=q.device).unsqueeze(-1) <= query_pos",
            ),
        ],
    ),
    (
        "ex2_m15",
        "cached_attention",
        "masked_with_zero",
        [('scores.masked_fill(~allowed, float("-inf"))', "scores.masked_fill(~allowed, 0.0)")],
    ),
    (
        "ex2_m16",  # float32's minimum does not fit float16
        "cached_attention",
        "float16_overflow",
        [('float("-inf")', "torch.finfo(torch.float32).min")],
    ),
    (
        "ex3_m3",  # the next token appended as (B, 1) but fed to the model as (B,)
        "generate",
        "argmax_without_keepdim",
        [
            (
                "        next_id = logits[:, -1].argmax(-1, keepdim=True)\n"
                "        ids = torch.cat([ids, next_id], dim=1)\n",
                "        next_id = logits[:, -1].argmax(-1)\n"
                "        ids = torch.cat([ids, next_id[:, None]], dim=1)\n",
            )
        ],
    ),
    (
        "ex3_m5",
        "generate",
        "caches_too_small",
        [
            (
                "model.init_caches(ids.shape[0], ids.shape[1] + max_new_tokens)",
                "model.init_caches(ids.shape[0], max_new_tokens)",
            )
        ],
    ),
    (
        "ex3_m7",
        "generate",
        "wrong_token_count",
        [("for step in range(max_new_tokens):", "for step in range(max_new_tokens - 1):")],
    ),
    (
        "ex3_m8",  # use_cache=False that still makes caches and passes them, fresh every step
        "generate",
        "cache_used_when_off",
        [
            (
                "    if not use_cache:\n",
                "    if not use_cache:\n"
                "        caches = model.init_caches(ids.shape[0], ids.shape[1] + max_new_tokens)\n",
            ),
            (
                "next_id = model(ids)[:, -1].argmax(-1, keepdim=True)",
                "next_id = model(ids, caches)[:, -1].argmax(-1, keepdim=True)\n"
                "            caches = model.init_caches(ids.shape[0], "
                "prompt_ids.shape[1] + max_new_tokens)",
            ),
        ],
    ),
    (
        "ex3_m10",
        "generate",
        "next_token_wrong_shape",
        [
            (
                "        ids = torch.cat([ids, next_id], dim=1)\n        if step",
                "        ids = torch.cat([ids, next_id], dim=0)\n        if step",
            )
        ],
    ),
    (
        "ex3_m11",
        "generate",
        "fed_wrong_token",
        [("logits = model(next_id, caches)", "logits = model(ids[:, -2:-1], caches)")],
    ),
    (
        "ex3_m12",  # fresh caches every step, fed the whole sequence
        "generate",
        "cache_unused",
        [
            (
                "logits = model(next_id, caches)",
                "caches = model.init_caches(ids.shape[0], ids.shape[1] + max_new_tokens)\n"
                "            logits = model(ids, caches)",
            )
        ],
    ),
    (
        "ex3_m13",  # argmax over the batch: a (1, vocab) row a step, or a crash when B > 1
        "generate",
        "next_token_wrong_shape",
        [
            (
                "model(ids)[:, -1].argmax(-1, keepdim=True)",
                "model(ids)[:, -1].argmax(0, keepdim=True)",
            )
        ],
    ),
    (
        "ex3_m14",  # caches of its own, sized by hand
        "generate",
        "cache_not_initialised",
        [
            (
                "model.init_caches(ids.shape[0], ids.shape[1] + max_new_tokens)",
                "[KVCache(ids.shape[0], 2, 16, ids.shape[1] + max_new_tokens) for _ in range(2)]",
            )
        ],
    ),
    (
        "ex3_m15",  # the caches made anew after the prefill: the prompt forgotten
        "generate",
        "generate_wrong_tokens",
        [
            (
                "            logits = model(next_id, caches)",
                "            if step == 0:\n"
                "                caches = model.init_caches(ids.shape[0], "
                "ids.shape[1] + max_new_tokens)\n"
                "            logits = model(next_id, caches)",
            )
        ],
    ),
    (
        "ex5_m2",
        "RollingKVCache",
        "rolling_read_from_first_slots",
        [
            ("self.k[:, :, kept % self.window]", "self.k[:, :, : len(kept)]"),
            ("self.v[:, :, kept % self.window]", "self.v[:, :, : len(kept)]"),
        ],
    ),
    (
        "ex5_m3",  # every position stored: several in one slot
        "RollingKVCache",
        "rolling_duplicate_slots",
        [("stay = positions[-self.window:]", "stay = positions")],
    ),
    (
        "ex5_m4",  # one old position too many
        "RollingKVCache",
        "rolling_wrong_keys",
        [("max(0, start - self.window + 1)", "max(0, start - self.window)")],
    ),
    (
        "ex5_m6",  # seq_len stops at the window
        "RollingKVCache",
        "not_advanced",
        [("self.seq_len = start + n", "self.seq_len = min(start + n, self.window)")],
    ),
    (
        "ex5_m7",  # every new key written first, then the window read back from the ring
        "RollingKVCache",
        "rolling_overwritten_before_read",
        [
            (
                "        k = torch.cat([self.k[:, :, kept % self.window], k_new], dim=-2)\n"
                "        v = torch.cat([self.v[:, :, kept % self.window], v_new], dim=-2)\n"
                "        stay = positions[-self.window:]\n"
                "        self.k[:, :, stay % self.window] = k[:, :, -len(stay):]\n"
                "        self.v[:, :, stay % self.window] = v[:, :, -len(stay):]\n",
                "        for t in range(n):\n"
                "            self.k[:, :, (start + t) % self.window] = k_new[:, :, t]\n"
                "            self.v[:, :, (start + t) % self.window] = v_new[:, :, t]\n"
                "        k = self.k[:, :, positions % self.window]\n"
                "        v = self.v[:, :, positions % self.window]\n",
            )
        ],
    ),
    (
        "ex5_m9b",  # the last `window` stored first, then the old keys read from the ring
        "RollingKVCache",
        "rolling_overwritten_before_read",
        [
            (
                "        k = torch.cat([self.k[:, :, kept % self.window], k_new], dim=-2)\n"
                "        v = torch.cat([self.v[:, :, kept % self.window], v_new], dim=-2)\n"
                "        stay = positions[-self.window:]\n"
                "        self.k[:, :, stay % self.window] = k[:, :, -len(stay):]\n"
                "        self.v[:, :, stay % self.window] = v[:, :, -len(stay):]\n",
                "        stay = positions[-self.window:]\n"
                "        old = kept % self.window\n"
                "        self.k[:, :, stay % self.window] = "
                "torch.cat([self.k[:, :, old], k_new], -2)[:, :, -len(stay):]\n"
                "        self.v[:, :, stay % self.window] = "
                "torch.cat([self.v[:, :, old], v_new], -2)[:, :, -len(stay):]\n"
                "        k = torch.cat([self.k[:, :, old], k_new], dim=-2)\n"
                "        v = torch.cat([self.v[:, :, old], v_new], dim=-2)\n",
            )
        ],
    ),
    (
        "ex5_m10",
        "RollingKVCache",
        "positions_not_long",
        [("        return k, v, positions\n", "        return k, v, positions.tolist()\n")],
    ),
    (
        "ex5_m11",
        "RollingKVCache",
        "positions_not_long",
        [("        return k, v, positions\n", "        return k, v, positions.float()\n")],
    ),
    (
        "ex5_m13",  # the first chunk's keys shifted in place
        "RollingKVCache",
        "modified_input",
        [
            (
                "        self.seq_len = start + n\n",
                "        k_new += 0 if start else 1\n        self.seq_len = start + n\n",
            )
        ],
    ),
    (
        "ex6_m4",  # block and offset swapped roles
        "PagedKVCache",
        "wrong_block_for_position",
        [
            (
                "table[position // self.block_size], position % self.block_size",
                "table[position % len(table)], position // self.block_size",
            )
        ],
    ),
    (
        "ex6_m6",  # no check: pop from an empty free list
        "PagedKVCache",
        "no_error_for_full_pool",
        [
            (
                "        if missing > len(self.free):\n"
                '            raise ValueError(f"pool full: {seq_id!r} needs {missing} blocks, '
                '{len(self.free)} free")\n',
                "",
            )
        ],
    ),
    (
        "ex6_m11",  # the blocks gathered in id order, not table order
        "PagedKVCache",
        "wrong_block_for_position",
        [
            ("[self.k[block] for block in table]", "[self.k[block] for block in sorted(table)]"),
            ("[self.v[block] for block in table]", "[self.v[block] for block in sorted(table)]"),
        ],
    ),
    (
        "ex6_m14",  # positions counted from the update, not from the sequence's start
        "PagedKVCache",
        "wrong_block_for_position",
        [
            (
                "table[position // self.block_size], position % self.block_size",
                "table[(position - start) // self.block_size], "
                "(position - start) % self.block_size",
            )
        ],
    ),
    (
        "ex6_m15",  # a free list one block short
        "PagedKVCache",
        "block_table_off_by_one",
        [("self.free = list(range(num_blocks))", "self.free = list(range(num_blocks - 1))")],
    ),
    (
        "ex6_m16",  # blocks for the new positions only, whatever the table holds
        "PagedKVCache",
        "block_table_off_by_one",
        [
            (
                "missing = -(-stop // self.block_size) - len(table)",
                "missing = -(-k_new.shape[1] // self.block_size)",
            )
        ],
    ),
    # The third pass's mistakes (2026-12-07) that some check once left unnamed or misnamed.
    (
        "p3_ex2_m9",  # k's dims reordered, no crash when H = 1: a (B, Lk, Lq, D) output
        "cached_attention",
        "transposed_wrong_dims",
        [("q @ k.transpose(-2, -1)", "q @ k.transpose(-1, -3).transpose(-2, -3)")],
    ),
    (
        "p3_ex3_m1",  # with the cache: the prefill's logits at position 0
        "generate",
        "argmax_first_position",
        [("next_id = logits[:, -1].argmax(", "next_id = logits[:, 0].argmax(")],
    ),
    (
        "p3_ex3_m10",  # argmax over the batch, one of its results copied to every sequence
        "generate",
        "argmax_over_batch",
        [
            (
                "next_id = logits[:, -1].argmax(-1, keepdim=True)",
                "next_id = logits[:, -1].argmax(0)[None].expand(ids.shape[0], -1)[:, :1]",
            )
        ],
    ),
    (
        "p3_ex4_m2",  # K or V only
        "kv_cache_bytes",
        "forgot_k_and_v",
        [("return 2 * num_layers", "return num_layers")],
    ),
    (
        "p3_ex4_m5",
        "kv_cache_bytes",
        "missing_factor",
        [("seq_len * batch_size * element", "seq_len * element")],
    ),
    (
        "p3_ex4_m7",  # the right value, a float
        "kv_cache_bytes",
        "bytes_not_int",
        [("return 2 * num_layers", "return 2.0 * num_layers")],
    ),
    (
        "p3_ex5_m7",  # a chunk's earlier queries lose the keys before the last window
        "RollingKVCache",
        "rolling_only_last_window",
        [
            (
                "        return k, v, positions\n",
                "        last = -self.window\n"
                "        return k[:, :, last:], v[:, :, last:], positions[last:]\n",
            )
        ],
    ),
    (
        "p3_ex6_m8",  # (n_blocks, H, bs, D) reshaped to (H, -1, D) without moving the heads
        "PagedKVCache",
        "gather_heads_blocks_mixed",
        [
            (
                "torch.cat([self.k[block] for block in table], dim=1)",
                "self.k[table].reshape(self.k.shape[1], -1, self.k.shape[3])",
            ),
            (
                "torch.cat([self.v[block] for block in table], dim=1)",
                "self.v[table].reshape(self.v.shape[1], -1, self.v.shape[3])",
            ),
        ],
    ),
    # The fourth pass's mistakes (2026-12-07) that were told generically or only by torch's error.
    (
        "p4_ex1_m12",  # the device argument kept: "cpu" (or None) never equals k_new.device
        "KVCache",
        "error_for_valid_update",
        [("        self.device = self.k.device", "        self.device = device")],
    ),
    (
        "p4_ex1_m15",  # L_new read from the last axis, head_dim
        "KVCache",
        "length_from_head_dim",
        [("B, H, n, D = k_new.shape", "B, H, _, D = k_new.shape\n        n = k_new.shape[-1]")],
    ),
    (
        "p4_ex2_m10_confused_triu",  # the (Lq, Lk) mask used transposed: crashes when Lq != Lk
        "cached_attention",
        "mask_wrong_shape",
        [("scores.masked_fill(~allowed, ", "scores.masked_fill(~allowed.T, ")],
    ),
    (
        "p4_ex3_m11",  # argmax over the batch with the cache: a (1, vocab) row fed back (B = 1)
        "generate",
        "next_token_wrong_shape",
        [
            (
                "next_id = logits[:, -1].argmax(-1, keepdim=True)",
                "next_id = logits[:, -1].argmax(0, keepdim=True)",
            )
        ],
    ),
    (
        "p4_ex3_m12",  # the prompt never written into the caches
        "generate",
        "prefill_without_caches",
        [("logits = model(ids, caches)", "logits = model(ids)")],
    ),
    (
        "p4_ex6_m9",  # a chunk written into the table's last block, whatever blocks it crosses
        "PagedKVCache",
        "wrong_block_for_position",
        [
            (
                "        for position in range(start, stop):\n"
                "            block, offset = table[position // self.block_size], "
                "position % self.block_size\n"
                "            self.k[block, :, offset] = k_new[:, position - start]\n"
                "            self.v[block, :, offset] = v_new[:, position - start]\n",
                "        offset = start % self.block_size\n"
                "        self.k[table[-1], :, offset : offset + k_new.shape[1]] = k_new\n"
                "        self.v[table[-1], :, offset : offset + k_new.shape[1]] = v_new\n",
            )
        ],
    ),
    (
        "p4_ex6_m12",  # gathered by (block, offset) index tensors, not moved back to (H, L, D)
        "PagedKVCache",
        "gathered_positions_first",
        [
            (
                "        k = torch.cat([self.k[block] for block in table], dim=1)[:, :length]"
                "  # (H, L, D)\n"
                "        v = torch.cat([self.v[block] for block in table], dim=1)[:, :length]\n",
                "        positions = torch.arange(length)\n"
                "        blocks = torch.tensor(table)[positions // self.block_size]\n"
                "        k = self.k[blocks, :, positions % self.block_size]\n"
                "        v = self.v[blocks, :, positions % self.block_size]\n",
            )
        ],
    ),
    (
        "p4_ex6_m13",  # a new sequence's table filled but never stored
        "PagedKVCache",
        "block_table_not_stored",
        [("self.block_tables.setdefault(seq_id, [])", "self.block_tables.get(seq_id, [])")],
    ),
    # The fifth pass (student10): mistakes that passed, were told another mistake, or a raw error.
    (
        "p5_ex1_m10",  # preallocated, then replaced by k_new and grown with torch.cat
        "KVCache",
        "not_preallocated",
        [
            (
                "        self.k[:, :, start:stop] = k_new\n        self.v[:, :, start:stop] = v_new\n",
                "        self.k = k_new if start == 0 else torch.cat([self.k, k_new], dim=2)\n"
                "        self.v = v_new if start == 0 else torch.cat([self.v, v_new], dim=2)\n",
            )
        ],
    ),
    (
        "p5_ex2_m10",  # v cast to float32, never cast back: @ mixes two dtypes
        "cached_attention",
        "dtypes_mixed",
        [
            (
                "return torch.softmax(scores, dim=-1) @ v",
                "return torch.softmax(scores, dim=-1) @ v.float()",
            )
        ],
    ),
    (
        "p5_ex3_m2",  # the next token fed as (1, B): the same as (B, 1) only when B = 1
        "generate",
        "next_token_wrong_shape",
        [("logits = model(next_id, caches)", "logits = model(next_id.view(1, -1), caches)")],
    ),
    (
        "p5_ex5_m10",  # before the first wrap the old keys kept as views, concatenated after the write
        "RollingKVCache",
        "rolling_overwritten_before_read",
        [
            (
                "        k = torch.cat([self.k[:, :, kept % self.window], k_new], dim=-2)\n"
                "        v = torch.cat([self.v[:, :, kept % self.window], v_new], dim=-2)\n",
                "        if start < self.window:  # not wrapped yet: views of the first slots\n"
                "            k_old, v_old = self.k[:, :, : len(kept)], self.v[:, :, : len(kept)]\n"
                "        else:\n"
                "            k_old, v_old = self.k[:, :, kept % self.window], self.v[:, :, kept % self.window]\n",
            ),
            (
                "        self.k[:, :, stay % self.window] = k[:, :, -len(stay):]\n"
                "        self.v[:, :, stay % self.window] = v[:, :, -len(stay):]\n",
                "        tail = torch.arange(start + n - min(n, self.window), start + n)\n"
                "        self.k[:, :, tail % self.window] = k_new[:, :, n - len(tail):]\n"
                "        self.v[:, :, tail % self.window] = v_new[:, :, n - len(tail):]\n"
                "        k, v = torch.cat([k_old, k_new], dim=-2), torch.cat([v_old, v_new], dim=-2)\n",
            ),
        ],
    ),
]


@pytest.mark.parametrize(
    "name, key, edits",
    [row[1:] for row in SECOND_PASS_BUGS],
    ids=[row[0] for row in SECOND_PASS_BUGS],
)
def test_second_pass_mistake_is_named(solution, name, key, edits, capsys):
    assert_named_on_every_seed(name, planted(solution, name, *edits), key, capsys)


# Mistakes the third pass saw named by one check and told something else (or nothing) by
# another: every check that fails must name them.
NAMED_BY_EVERY_CHECK = [
    row
    for row in SECOND_PASS_BUGS
    if row[0] in ("ex1_m2", "ex5_m11")
    or (row[0].startswith(("p3_", "p4_", "p5_")) and row[0] != "p4_ex2_m10_confused_triu")
]
# (p4_ex2_m10_confused_triu: square inputs fit its transposed mask, told by what it hides.)


@pytest.mark.parametrize(
    "name, key, edits",
    [row[1:] for row in NAMED_BY_EVERY_CHECK],
    ids=[row[0] for row in NAMED_BY_EVERY_CHECK],
)
def test_mistake_is_named_by_every_failing_check(solution, name, key, edits):
    bug = planted(solution, name, *edits)
    for seed in (0, *HIDDEN_SEEDS):
        result = report(name, bug, hidden=seed > 0, seed=seed)
        failed = [(r.check, r.key, r.message) for r in result.results if not r.passed]
        assert failed and {key for _, key, _ in failed} == {key}, (seed, failed)


def square_only_attention(q, k, v):
    """A whole prompt or one token attended; a chunk after cached keys refused by its own raise
    (written here, in a file, so the crash's line is shown as in a notebook)."""
    lq, lk = q.shape[-2], k.shape[-2]
    if 1 < lq < lk:
        raise ValueError("chunked prefill is not supported")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Lq, Lk)
    allowed = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


# Crashes no check names keep torch's words, with a hint for their kind of error
# (harness.checking.raised_hint), not one about shape errors: (exercise, make(solution), the hint).
UNNAMED_CRASHES = [
    ("cached_attention", lambda solution: square_only_attention, "your own raise fired"),
    (
        "PagedKVCache",  # the table deleted again after pop() removed it
        lambda solution: planted(
            solution,
            "PagedKVCache",
            (
                "        del self.lengths[seq_id]\n",
                "        del self.block_tables[seq_id]\n        del self.lengths[seq_id]\n",
            ),
        ),
        "a KeyError is a dict read with a key it does not hold",
    ),
]


@pytest.mark.parametrize(
    "name, make, hint", UNNAMED_CRASHES, ids=[name for name, _, _ in UNNAMED_CRASHES]
)
def test_unnamed_crash_is_told_what_its_error_means(solution, name, make, hint):
    bug = make(solution)
    for seed in (0, *HIDDEN_SEEDS):
        result = report(name, bug, hidden=seed > 0, seed=seed)
        crashes = [(r.message, r.hint) for r in result.results if r.key == "raised"]
        assert crashes and all(hint in told for _, told in crashes), (seed, crashes)


def bits(dtype):
    return (torch.finfo(dtype) if dtype.is_floating_point else torch.iinfo(dtype)).bits


def bytes_with(element_size):
    def kv_cache_bytes(num_layers, num_kv_heads, head_dim, seq_len, batch_size, dtype):
        product = 2 * num_layers * num_kv_heads * head_dim * seq_len * batch_size
        return product * element_size(dtype)

    return kv_cache_bytes


@pytest.mark.parametrize(
    "bug, key",
    [
        (bytes_with(lambda dtype: torch.finfo(dtype).bits), "bits_not_bytes"),  # ex4_m4
        (
            bytes_with(lambda dtype: 2 if dtype in (torch.float16, torch.bfloat16) else 4),
            "wrong_element_size",
        ),
        (lambda *args: bytes_without("none")(*args) / 1e9, "wrong_unit"),  # ex4_m8
        (lambda *args: 1.0 * bytes_without("none")(*args), "bytes_not_int"),  # ex4_m9: 2.0 * ...
        (bytes_with(lambda dtype: bits(dtype) / 8), "bytes_not_int"),
        (lambda *args: torch.tensor(bytes_without("none")(*args)), "bytes_not_int"),
    ],
    ids=["ex4_m4", "ex4_m7", "ex4_m8", "ex4_m9", "ex4_m11", "p4_ex4_m9"],
)
def test_second_pass_bytes_mistake_is_named(bug, key, capsys):
    assert_named_on_every_seed("kv_cache_bytes", bug, key, capsys)


def test_second_pass_bytes_with_a_factor_repeated_is_told_every_factor(capsys):
    """ex4_m10: num_layers written twice, num_kv_heads left out."""

    def kv_cache_bytes(num_layers, num_kv_heads, head_dim, seq_len, batch_size, dtype):
        element = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * num_layers * head_dim * seq_len * batch_size * element

    for seed in (0, *HIDDEN_SEEDS):
        result = report("kv_cache_bytes", kv_cache_bytes, hidden=seed > 0, seed=seed)
        assert any("multiply all seven" in r.hint for r in result.results if not r.passed)


@pytest.mark.parametrize(
    "edits",
    [
        [  # ex2_m10: computed in float32, cast back: float64 inputs lose their precision
            ("q @ k.transpose(-2, -1)", "q.float() @ k.float().transpose(-2, -1)"),
            (
                "return torch.softmax(scores, dim=-1) @ v",
                "return (torch.softmax(scores, dim=-1) @ v.float()).to(q.dtype)",
            ),
        ],
        [  # ex2_m23: the same with its own softmax and a multiplicative mask
            ("q @ k.transpose(-2, -1)", "q.float() @ k.float().transpose(-2, -1)"),
            ('float("-inf")', "torch.finfo(torch.float32).min"),
            (
                "return torch.softmax(scores, dim=-1) @ v",
                "weights = torch.exp(scores - scores.amax(-1, keepdim=True)) * allowed\n"
                "    weights = weights / weights.sum(-1, keepdim=True)\n"
                "    return (weights @ v.float()).type_as(q)",
            ),
        ],
    ],
    ids=["ex2_m10", "ex2_m23"],
)
def test_second_pass_float32_inside_is_told_lost_precision(solution, edits):
    lossy = planted(solution, "cached_attention", *edits)
    for seed in (0, *HIDDEN_SEEDS):
        result = report("cached_attention", lossy, hidden=seed > 0, seed=seed)
        assert "lost_precision" in result.diagnoses, (seed, result.results)


def test_second_pass_control_is_caught(solution):
    """ex5_control14: k_new + 1 on the first update (not in place), an arbitrary wrong answer."""
    shifted = planted(
        solution,
        "RollingKVCache",
        (
            "start, n = self.seq_len, k_new.shape[-2]",
            "start, n = self.seq_len, k_new.shape[-2]\n        k_new = k_new + (0 if start else 1)",
        ),
    )
    for seed in (0, *HIDDEN_SEEDS):
        assert not report("RollingKVCache", shifted, hidden=seed > 0, seed=seed).passed


# The second pass's correct alternatives.


def refuse_misfit(cache, *tensors):
    """ex1_u1 and ex1_u2's checks: a ValueError for a batch, heads, head_dim, dtype or device
    that is not the cache's."""
    B, H, _, D = cache.k.shape
    for t in tensors:
        if t.dim() != 4 or (t.shape[0], t.shape[1], t.shape[3]) != (B, H, D):
            raise ValueError(f"shape {tuple(t.shape)} does not fit a ({B}, {H}, _, {D}) cache")
        if t.dtype != cache.k.dtype or t.device != cache.k.device:
            raise ValueError(f"{t.dtype} on {t.device} does not fit the cache")


def index_copy_cache(solution):
    """ex1_u1: index_copy_ into the buffers, narrow() views out."""

    class KVCache(solution["KVCache"]):
        def update(self, k_new, v_new):
            refuse_misfit(self, k_new, v_new)
            n = k_new.shape[2]
            if self.seq_len + n > self.k.shape[2]:
                raise ValueError("cache full")
            index = torch.arange(self.seq_len, self.seq_len + n, device=self.k.device)
            self.k.index_copy_(2, index, k_new)
            self.v.index_copy_(2, index, v_new)
            self.seq_len += n
            return self.k.narrow(2, 0, self.seq_len), self.v.narrow(2, 0, self.seq_len)

    return KVCache


def stacked_cache(solution):
    """ex1_u2: one (2, B, H, S, D) buffer, self.k and self.v views of it, written in one copy_."""

    class KVCache(solution["KVCache"]):
        def __init__(
            self, batch_size, num_heads, head_dim, max_seq_len, dtype=torch.float32, device=None
        ):
            super().__init__(batch_size, num_heads, head_dim, max_seq_len, dtype, device)
            self.kv = torch.zeros(2, *self.k.shape, dtype=dtype, device=device)
            self.k, self.v = self.kv[0], self.kv[1]

        def update(self, k_new, v_new):
            refuse_misfit(self, k_new, v_new)
            end = self.seq_len + k_new.shape[2]
            if end > self.k.shape[2]:
                raise ValueError("overflow")
            self.kv[:, :, :, self.seq_len : end].copy_(torch.stack([k_new, v_new]))
            self.seq_len = end
            return self.k[:, :, :end], self.v[:, :, :end]

    return KVCache


def einsum_bias_attention(q, k, v):
    """ex2_u1: einsum in float64, an additive triu(-inf) bias, the scale applied to q."""
    lq, lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    bias = torch.full((lq, lk), float("-inf"), device=q.device).triu(lk - lq + 1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q.double() * d**-0.5, k.double()) + bias
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v.double()).to(q.dtype)


def multiplicative_mask_attention(q, k, v):
    """ex2_u2b: its own max-subtracted softmax, masked with torch.where and a 0/1 product."""
    lq, lk = q.shape[-2], k.shape[-2]
    keep = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
    scores = torch.where(keep, q @ k.mT * q.shape[-1] ** -0.5, torch.finfo(q.dtype).min)
    weights = torch.exp(scores - scores.amax(-1, keepdim=True)) * keep
    return (weights / weights.sum(-1, keepdim=True)) @ v


def per_query_attention(q, k, v):
    """ex2_u3: a loop over the queries, each over its prefix of the keys: no mask at all."""
    lq, lk = q.shape[-2], k.shape[-2]
    outs = []
    for i in range(lq):
        seen = lk - lq + i + 1
        scores = q[..., i : i + 1, :] @ k[..., :seen, :].transpose(-1, -2) / math.sqrt(q.shape[-1])
        outs.append(torch.softmax(scores, -1) @ v[..., :seen, :])
    return torch.cat(outs, dim=-2)


def promoted_attention(q, k, v):
    """ex2_u4: float16 computed in float32 (float64 kept), the mask the bottom Lq rows of a
    square causal one."""
    lq, lk = q.shape[-2], k.shape[-2]
    dtype = torch.promote_types(q.dtype, torch.float32)
    causal = torch.ones(lk, lk, dtype=torch.bool, device=q.device).tril()[lk - lq :]
    scores = (q.to(dtype) @ k.to(dtype).transpose(-2, -1)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(causal.logical_not(), -math.inf)
    return (scores.softmax(dim=-1) @ v.to(dtype)).to(q.dtype)


@torch.no_grad()
def generate_into_buffer(model, prompt_ids, max_new_tokens, use_cache=True):
    """ex3_u1: the output preallocated and filled column by column, one loop for both modes."""
    B, L = prompt_ids.shape
    out = torch.empty(B, L + max_new_tokens, dtype=prompt_ids.dtype, device=prompt_ids.device)
    out[:, :L] = prompt_ids
    caches = model.init_caches(B, L + max_new_tokens) if use_cache else None
    feed = prompt_ids
    for t in range(L, L + max_new_tokens):
        logits = model(feed, caches) if use_cache else model(out[:, :t])
        out[:, t] = logits[:, -1, :].argmax(dim=-1)
        feed = out[:, t : t + 1]
    return out


@torch.no_grad()
def generate_token_list(model, prompt_ids, max_new_tokens, use_cache=True):
    """ex3_u2: the new tokens kept in a list (torch.max(...).indices), concatenated at the end."""
    B, L = prompt_ids.shape
    new = []
    if use_cache:
        caches = model.init_caches(B, L + max_new_tokens)
        logits = model(prompt_ids, caches)[:, -1]
    for i in range(max_new_tokens):
        if not use_cache:
            logits = model(torch.cat([prompt_ids, *new], 1))[:, -1]
        token = torch.max(logits, dim=-1).indices.unsqueeze(1)
        new.append(token)
        if use_cache and i + 1 < max_new_tokens:
            logits = model(token, caches)[:, -1]
    return torch.cat([prompt_ids, *new], dim=1)


def rolled_ring(solution):
    """ex5_u1: the old keys read in time order from torch.roll of the full ring, the new ones
    written one position at a time."""

    class Rolling(solution["RollingKVCache"]):
        def update(self, k_new, v_new):
            w, start, n = self.window, self.seq_len, k_new.shape[2]
            n_old = min(start, w - 1)
            if start >= w:  # the oldest slot is start % w
                k_chrono = torch.roll(self.k, shifts=-(start % w), dims=2)
                v_chrono = torch.roll(self.v, shifts=-(start % w), dims=2)
            else:
                k_chrono, v_chrono = self.k[:, :, :start].clone(), self.v[:, :, :start].clone()
            k = torch.cat([k_chrono[:, :, k_chrono.shape[2] - n_old :], k_new], 2)
            v = torch.cat([v_chrono[:, :, v_chrono.shape[2] - n_old :], v_new], 2)
            for p in range(max(start, start + n - w), start + n):
                self.k[:, :, p % w] = k_new[:, :, p - start]
                self.v[:, :, p % w] = v_new[:, :, p - start]
            self.seq_len = start + n
            return k, v, torch.arange(start - n_old, start + n)

    return Rolling


def index_select_ring(solution):
    """ex5_u2: reads with index_select, the last `window` positions written with index_copy_."""

    class Rolling(solution["RollingKVCache"]):
        def update(self, k_new, v_new):
            w, start, n = self.window, self.seq_len, k_new.shape[2]
            positions = torch.arange(max(0, start - w + 1), start + n, device=self.k.device)
            old_slots = positions[: start - int(positions[0])] % w
            k = torch.cat([self.k.index_select(2, old_slots), k_new], 2)
            v = torch.cat([self.v.index_select(2, old_slots), v_new], 2)
            tail = positions[-w:]
            self.k.index_copy_(2, tail % w, k[:, :, -w:])
            self.v.index_copy_(2, tail % w, v[:, :, -w:])
            self.seq_len = start + n
            return k, v, positions

    return Rolling


def view_reading_ring(solution):
    """ex5_u3: before the ring wraps, the old keys read as slice views, concatenated (a copy)
    before the writes."""

    class Rolling(solution["RollingKVCache"]):
        def update(self, k_new, v_new):
            w, start, n = self.window, self.seq_len, k_new.shape[2]
            first = max(0, start - w + 1)
            if start <= w:
                k_old, v_old = self.k[:, :, first:start], self.v[:, :, first:start]  # views
            else:
                slots = torch.arange(first, start) % w
                k_old, v_old = self.k[:, :, slots], self.v[:, :, slots]
            positions = torch.arange(first, start + n)
            stay = positions[-w:]
            self.seq_len = start + n
            k, v = torch.cat([k_old, k_new], 2), torch.cat([v_old, v_new], 2)
            self.k[:, :, stay % w] = k[:, :, -w:]
            self.v[:, :, stay % w] = v[:, :, -w:]
            return k, v, positions

    return Rolling


class FlatSlotPagedCache:
    """ex6_u1: a vectorised scatter to flat slot ids (block * block_size + offset), a gather by
    index_select of a flattened pool copy, the free list used first in, first out."""

    def __init__(
        self, num_blocks, block_size, num_heads, head_dim, dtype=torch.float32, device=None
    ):
        self.bs = block_size
        self.k = torch.zeros(
            num_blocks, num_heads, block_size, head_dim, dtype=dtype, device=device
        )
        self.v = torch.zeros_like(self.k)
        self.free = list(range(num_blocks))
        self.block_tables, self._len = {}, {}

    def _slots(self, seq_id, lo, hi):
        table = torch.tensor(self.block_tables[seq_id], dtype=torch.long, device=self.k.device)
        p = torch.arange(lo, hi, device=self.k.device)
        return table[p // self.bs] * self.bs + p % self.bs

    def _flat(self, pool):  # (N, H, bs, D) -> (H, N * bs, D): permute + reshape copies
        return pool.permute(1, 0, 2, 3).reshape(pool.shape[1], -1, pool.shape[3])

    def update(self, seq_id, k_new, v_new):
        start = self._len.get(seq_id, 0)
        stop = start + k_new.shape[1]
        table = self.block_tables.setdefault(seq_id, [])
        need = math.ceil(stop / self.bs) - len(table)
        if need > len(self.free):
            if not table:
                del self.block_tables[seq_id]
            raise ValueError("out of blocks")
        table += [self.free.pop(0) for _ in range(need)]
        slots = self._slots(seq_id, start, stop)
        self.k[slots // self.bs, :, slots % self.bs] = k_new.transpose(0, 1)
        self.v[slots // self.bs, :, slots % self.bs] = v_new.transpose(0, 1)
        self._len[seq_id] = stop
        return self.gather(seq_id)

    def gather(self, seq_id):
        slots = self._slots(seq_id, 0, self._len[seq_id])
        return self._flat(self.k).index_select(1, slots), self._flat(self.v).index_select(1, slots)

    def free_sequence(self, seq_id):
        self.free += self.block_tables.pop(seq_id)
        del self._len[seq_id]


class ChunkWritingPagedCache:
    """ex6_u2: writes a block's worth of positions per slice, gathers self.k[table] flattened,
    keeps the lengths in its own dict, pops the free list from its low end."""

    def __init__(
        self, num_blocks, block_size, num_heads, head_dim, dtype=torch.float32, device=None
    ):
        self.block_size = block_size
        self.k = torch.zeros(
            num_blocks, num_heads, block_size, head_dim, dtype=dtype, device=device
        )
        self.v = torch.zeros_like(self.k)
        self.free = list(range(num_blocks))[::-1]
        self.block_tables, self.seq_lens = {}, {}

    def update(self, seq_id, k_new, v_new):
        bs, n = self.block_size, k_new.shape[1]
        table = list(self.block_tables.get(seq_id, []))
        start = self.seq_lens.get(seq_id, 0)
        need = max(0, -(-(start + n) // bs) - len(table))
        if need > len(self.free):
            raise ValueError("no free block")
        table += [self.free.pop() for _ in range(need)]
        self.block_tables[seq_id] = table
        i = 0
        while i < n:
            block, offset = divmod(start + i, bs)
            m = min(bs - offset, n - i)  # the positions left in this block
            self.k[table[block], :, offset : offset + m] = k_new[:, i : i + m]
            self.v[table[block], :, offset : offset + m] = v_new[:, i : i + m]
            i += m
        self.seq_lens[seq_id] = start + n
        return self.gather(seq_id)

    def gather(self, seq_id):
        table = torch.tensor(self.block_tables[seq_id], dtype=torch.long, device=self.k.device)
        length, (_, H, _, D) = self.seq_lens[seq_id], self.k.shape
        k = self.k[table].transpose(0, 1).reshape(H, -1, D)[:, :length]
        v = self.v[table].transpose(0, 1).reshape(H, -1, D)[:, :length]
        return k, v

    def free_sequence(self, seq_id):
        self.free.extend(self.block_tables.pop(seq_id))
        self.seq_lens.pop(seq_id, None)


def in_place_scores_attention(q, k, v):
    """p5_ex2_u2: the scores (its own tensor) divided and masked in place."""
    lq, lk = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-2, -1)
    scores /= math.sqrt(q.shape[-1])
    scores.masked_fill_(torch.arange(lk) > torch.arange(lq)[:, None] + (lk - lq), float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v).to(q.dtype)


def triu_min_fill_attention(q, k, v):
    """p5_ex2_u4: the hidden keys a triu(diagonal=Lk - Lq + 1) mask, filled with finfo.min."""
    lq, lk = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    hide = torch.triu(torch.ones(lq, lk, dtype=torch.bool), diagonal=lk - lq + 1)
    scores = scores.masked_fill(hide, torch.finfo(scores.dtype).min)
    return (torch.softmax(scores, dim=-1) @ v).to(q.dtype)


SECOND_PASS_CORRECT = [
    # (attempt, exercise, make(solution) -> the implementation)
    ("ex1_u1", "KVCache", index_copy_cache),
    ("ex1_u2", "KVCache", stacked_cache),
    ("ex2_u1", "cached_attention", lambda solution: einsum_bias_attention),
    ("ex2_u2b", "cached_attention", lambda solution: multiplicative_mask_attention),
    ("ex2_u3", "cached_attention", lambda solution: per_query_attention),
    ("ex2_u4", "cached_attention", lambda solution: promoted_attention),
    ("ex3_u1", "generate", lambda solution: generate_into_buffer),
    ("ex3_u2", "generate", lambda solution: generate_token_list),
    (
        "ex4_u1",
        "kv_cache_bytes",
        lambda solution: lambda l, h, d, s, b, dtype: math.prod((2, l, h, d, s, b, dtype.itemsize)),
    ),
    (
        "ex4_u2",  # a real buffer's nbytes, on the meta device: nothing allocated
        "kv_cache_bytes",
        lambda solution: (
            lambda l, h, d, s, b, dtype: int(
                2 * l * torch.empty(b, h, s, d, dtype=dtype, device="meta").nbytes
            )
        ),
    ),
    (
        "ex4_u3",
        "kv_cache_bytes",
        lambda solution: bytes_with(lambda dtype: bits(dtype) // 8),
    ),
    ("ex5_u1", "RollingKVCache", rolled_ring),
    ("ex5_u2", "RollingKVCache", index_select_ring),
    ("ex5_u3", "RollingKVCache", view_reading_ring),
    ("p5_ex2_u2", "cached_attention", lambda solution: in_place_scores_attention),
    ("p5_ex2_u4", "cached_attention", lambda solution: triu_min_fill_attention),
    (
        "p5_ex3_u3",  # caches one position short: the last new token is never fed back
        "generate",
        lambda solution: planted(
            solution,
            "generate",
            ("ids.shape[1] + max_new_tokens)", "ids.shape[1] + max_new_tokens - 1)"),
        ),
    ),
    ("ex6_u1", "PagedKVCache", lambda solution: FlatSlotPagedCache),
    ("ex6_u2", "PagedKVCache", lambda solution: ChunkWritingPagedCache),
    # ex5_m12 keeps window - 1 keys, not the `window` the docstring says: the slot it leaves stale
    # holds the position that leaves the window at the next update, so it is never read again.
    (
        "ex5_m12",
        "RollingKVCache",
        lambda solution: planted(
            solution,
            "RollingKVCache",
            ("stay = positions[-self.window:]", "stay = positions[-(self.window - 1):]"),
        ),
    ),
]


@pytest.mark.parametrize(
    "name, make",
    [row[1:] for row in SECOND_PASS_CORRECT],
    ids=[row[0] for row in SECOND_PASS_CORRECT],
)
def test_second_pass_correct_alternative_passes(solution, name, make):
    impl = make(solution)
    for seed in (0, *HIDDEN_SEEDS):
        result = report(name, impl, hidden=seed > 0, seed=seed)
        assert result.passed, (seed, [(r.check, r.message) for r in result.results if not r.passed])


class CatCache:
    """A cache that grows with torch.cat and whose reset() only zeroes the count: the old keys
    stay in front of the new ones."""

    def __init__(
        self, batch_size, num_heads, head_dim, max_seq_len, dtype=torch.float32, device=None
    ):
        self.k = torch.zeros(batch_size, num_heads, 0, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.seq_len = 0

    def update(self, k_new, v_new):
        self.k, self.v = torch.cat([self.k, k_new], -2), torch.cat([self.v, v_new], -2)
        self.seq_len += k_new.shape[-2]
        return self.k, self.v

    def get_seq_length(self):
        return self.seq_len

    def reset(self):
        self.seq_len = 0


def test_kv_cache_reset_that_keeps_catted_keys_is_named(capsys):
    assert_named_on_every_seed("KVCache", CatCache, "reset_keeps_keys", capsys)


# ----------------------------------------------------------------------------- the notebook's promises

# Each exercise's "The checks recognise: ..." list in the notebook, phrase by phrase, and the key
# (or keys) a planted bug above is named under: every promise is kept by a test.
PROMISES = {
    "KVCache": {
        "`seq_len` not advanced": "not_advanced",
        "every update written at position 0": "writes_at_zero",
        "e.g. `seq_len` advanced before the write": "writes_at_wrong_offset",
        "the whole buffer returned instead of the filled prefix": "whole_buffer",
        "(or a prefix one position too long or short)": "prefix_wrong_length",
        "the keys written into the value buffer": "v_gets_k",
        "`reset()` that keeps the length": "reset_keeps_length",
        "(or the old keys, when the cache grows with `torch.cat`)": "reset_keeps_keys",
        "buffers that are not preallocated (or copies instead of views)": "not_preallocated",
        "no `ValueError` on overflow or on a batch, head, head_dim, dtype or device": (
            "no_error_for_bad_update"
        ),
        "a `ValueError` for a valid update, e.g. a device kept as `None` or `'cpu'`": (
            "error_for_valid_update"
        ),
        "`seq_len` never set in `__init__`": "seq_len_not_set",
        "kept as a tensor instead of an int": "not_advanced",
        "advanced by `head_dim` (`k_new.shape[-1]`)": "length_from_head_dim",
        "`k_new` or `v_new` changed in place": "modified_input",
    },
    "cached_attention": {
        "a top-left causal mask": "top_left_causal",
        "no causal mask at all": "no_causal_mask",
        "a mask that hides the diagonal": "excludes_diagonal",
        "an inverted mask": "mask_inverted",
        "a mask that leaves a query no key": "mask_hides_every_key",
        "a mask of another shape than $(L_q, L_k)$ (e.g. transposed with `.T`)": (
            "mask_wrong_shape"
        ),
        "a softmax over the queries instead of the keys": "softmax_over_queries",
        "a missing $1/\\sqrt d$": "missing_scale",
        "(or $1/d$, or $1/\\sqrt L$ instead)": ("divided_by_d", "scaled_by_length"),
        "the weights multiplied by the keys instead of the values": "weights_times_k",
        "`q`, `k` or `v` changed in place": "modified_input",
        "a mask filled with `-1e9`": "float16_overflow",
    },
    "generate": {
        "other tokens than greedy decoding's": "generate_wrong_tokens",
        "the logits at position 0 instead of the last": "argmax_first_position",
        "a decode step fed another token than the one just generated": "fed_wrong_token",
        "only the new tokens returned without the prompt": "generate_without_prompt",
        "another number of new tokens than `max_new_tokens`": "wrong_token_count",
        "a next token of shape `(B,)` instead of `(B, 1)`": "argmax_without_keepdim",
        "or concatenated along the wrong axis": "next_token_wrong_shape",
        "`use_cache=True` that still feeds the whole sequence every step": "cache_unused",
        "caches not made with `model.init_caches`": "cache_not_initialised",
        "or too short for the prompt and the new tokens": "caches_too_small",
        "a prefill or decode steps called without the caches": (
            "prefill_without_caches",
            "decode_without_caches",
        ),
        "caches made or passed when `use_cache=False`": "cache_used_when_off",
    },
    "kv_cache_bytes": {
        "a fixed number of bytes per element whatever the dtype": "wrong_element_size",
        "a size worked out for some dtypes only": "element_size_by_hand",
        "K or V counted alone": "forgot_k_and_v",
        "another factor missing": "missing_factor",
        "bits instead of bytes": "bits_not_bytes",
        "GiB or GB instead of bytes": "wrong_unit",
    },
    "RollingKVCache": {
        "positions that restart (slot numbers instead of absolute positions)": (
            "positions_not_absolute"
        ),
        "keys that do not match their positions, missing or extra keys": "rolling_wrong_keys",
        "old keys overwritten by the update before they were read": (
            "rolling_overwritten_before_read"
        ),
        "a cache that grows past $w$ slots": "rolling_not_bounded",
        "several new keys written into one slot at once": "rolling_duplicate_slots",
        "`seq_len` not counting every position": "not_advanced",
        "a triple in another order than `(k, v, positions)`": "rolling_wrong_order",
        "`k_new` or `v_new` changed in place": "modified_input",
    },
    "PagedKVCache": {
        "a block table one block short or long": "block_table_off_by_one",
        "a new sequence's table never stored in `self.block_tables`": "block_table_not_stored",
        "positions in the wrong block or offset": "wrong_block_for_position",
        "a chunk that crosses a block boundary written into one block": (
            "wrong_block_for_position"
        ),
        "the keys written into the value blocks": "v_gets_k",
        "a gather that keeps the unused tail of the last block": "gather_not_cropped",
        "(or returns `(L, num_heads, head_dim)`)": "gathered_positions_first",
        "a block owned twice": "blocks_shared",
        "a `free_sequence` that loses blocks": "blocks_not_freed",
        "or keeps the sequence's table or length": ("free_keeps_table", "free_keeps_length"),
        "a full pool that does not raise `ValueError`": "no_error_for_full_pool",
        "blocks taken before that `ValueError` and never given back": "blocks_leaked_on_error",
    },
}

# The planted-bug tables, by exercise: (test, exercise) for the tests parametrized over a bug (or
# a maker of one) and its key, then the tables of edits.
PLANTED_BUG_TESTS = [
    (test_kv_cache_bug_is_named, "KVCache"),
    (test_cached_attention_bug_is_named, "cached_attention"),
    (test_generate_bug_is_named, "generate"),
    (test_kv_cache_bytes_bug_is_named, "kv_cache_bytes"),
    (test_beginner_bytes_mistake_is_named, "kv_cache_bytes"),
    (test_second_pass_bytes_mistake_is_named, "kv_cache_bytes"),
    (test_rolling_bug_is_named, "RollingKVCache"),
    (test_paged_bug_is_named, "PagedKVCache"),
]
# The single planted-bug tests: (exercise, key).
SINGLE_PLANTED_BUGS = [
    ("KVCache", "not_preallocated"),  # test_kv_cache_with_cat_is_not_preallocated
    ("KVCache", "seq_len_not_set"),  # test_seq_len_never_set_is_told_missing
    ("KVCache", "reset_keeps_keys"),  # test_kv_cache_reset_that_keeps_catted_keys_is_named
]


def keys_planted(name) -> set:
    """The keys the planted bugs of exercise `name` are named under."""
    keys = {key for test, exercise in PLANTED_BUG_TESTS if exercise == name for key in keyed(test)}
    keys |= {key for exercise, _, key, _ in BEGINNER_BUGS if exercise == name}
    keys |= {key for _, exercise, key, _ in SECOND_PASS_BUGS if exercise == name}
    return keys | {key for exercise, key in SINGLE_PLANTED_BUGS if exercise == name}


def keyed(test) -> set:
    """The keys of a test parametrized over ("bug, key") or ("make, key")."""
    (marker,) = [m for m in test.pytestmark if m.name == "parametrize"]
    return {row[-1] for row in marker.args[1]}


@pytest.mark.parametrize("name, phrase", promised(PROMISES))
def test_the_notebook_lists_only_mistakes_the_checks_name(name, phrase):
    assert_promise_kept(DAY, PROMISES, name, phrase, keys_planted(name))
