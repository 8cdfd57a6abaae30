"""What audio and images become in MiniCPM-o 2.6's context: its processor's placeholder arithmetic.

The processor replaces each audio item with groups of `<unk>` (25 per second of audio, one group per
started 25) between `<|audio_start|>`/`<|audio_end|>`, and each image with an overview of 64 `<unk>`
between `<image>`/`</image>`, followed, when `max_slice_nums` > 1 lets it slice a large image, by a grid
of slices of 64 `<unk>` between `<slice>`/`</slice>`, rows separated by a newline. The grid is the one
whose shape is closest (in log aspect ratio) to the image's, among grids of about as many cells as the
image covers 448×448 squares (capped at `max_slice_nums`). Verified against the real code's measured
context growth (tests/integration/test_real_code.py): 1 s of audio = 27 tokens, a 640×480 frame = 66,
or 198 sliced (an overview and 2 slices).

The tiny engine builds its prompts from these, and usage counts them, so both follow the real model.
Must not import: torch, sockets, omni_server.session, omni_server.transport.
"""

from __future__ import annotations

import math

AUDIO_HOP = 160  # the Whisper feature extractor's hop at 16 kHz: 100 mel frames per second
AUDIO_TOKENS_PER_GROUP = 25  # one second of audio
IMAGE_QUERY_TOKENS = 64  # the resampler's queries per image or slice
SLICE_SIDE = 448  # the processor's scale_resolution


def audio_token_count(n_samples: int) -> int:
    """`<unk>`s for `n_samples` of 16 kHz audio (mel frames → stride-2 conv → pooling by 2)."""
    frames = -(-n_samples // AUDIO_HOP)
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1 if frames > 0 else 0


def audio_placeholder(n_samples: int) -> str:
    """The tokens an audio item becomes: per started 25 `<unk>`, `<|audio_start|>` + the group + `<|audio_end|>`."""
    total, groups = audio_token_count(n_samples), []
    for start in range(0, total, AUDIO_TOKENS_PER_GROUP):
        groups.append("<|audio_start|>" + "<unk>" * min(AUDIO_TOKENS_PER_GROUP, total - start) + "<|audio_end|>")
    return "".join(groups)


def audio_tokens(n_samples: int) -> int:
    """Context tokens an audio item of `n_samples` costs (1 s: 25 + 2 tags = 27)."""
    count = audio_token_count(n_samples)
    return count + 2 * -(-count // AUDIO_TOKENS_PER_GROUP)


def slice_grid(width: int, height: int, max_slice_nums: int | None) -> tuple[int, int] | None:
    """(columns, rows) the processor slices an image into, or None when it keeps it whole."""
    limit = 1 if max_slice_nums is None else max_slice_nums
    cells = min(math.ceil(width * height / SLICE_SIDE**2), limit)
    if cells <= 1:
        return None
    sizes = [n for n in (cells - 1, cells, cells + 1) if 1 < n <= limit]
    grids = [(cols, n // cols) for n in sizes for cols in range(1, n + 1) if n % cols == 0]
    aspect = math.log(width / height)
    return min(grids, key=lambda grid: abs(aspect - math.log(grid[0] / grid[1])))


def image_placeholder(width: int, height: int, max_slice_nums: int | None) -> str:
    """The tokens an image becomes: the overview, then the slices row by row (rows joined by a newline)."""
    overview = "<image>" + "<unk>" * IMAGE_QUERY_TOKENS + "</image>"
    grid = slice_grid(width, height, max_slice_nums)
    if grid is None:
        return overview
    cols, rows = grid
    piece = "<slice>" + "<unk>" * IMAGE_QUERY_TOKENS + "</slice>"
    return overview + "\n".join(piece * cols for _ in range(rows))


def image_tokens(width: int, height: int, max_slice_nums: int | None) -> int:
    """Context tokens an image costs: 66 per overview and slice, plus a newline between slice rows."""
    grid = slice_grid(width, height, max_slice_nums)
    per_piece = IMAGE_QUERY_TOKENS + 2
    return per_piece if grid is None else per_piece * (1 + grid[0] * grid[1]) + grid[1] - 1
