"""The in-process decoders read only regular files, up to the size cap: a FIFO, /dev/zero, a symlink loop, a
folder or a huge file is an unreadable image with a reason, never a hang or unbounded memory (issue 14, item 2)."""

import os
import threading

import numpy as np
import pytest
from PIL import Image

from bafo_pipeline.data.files import DEFAULT_MAX_FILE_BYTES
from bafo_pipeline.data.images import decode_images
from bafo_pipeline.data.jpeg_tensors import iter_tensor_batches

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev/zero are POSIX")


@pytest.fixture()
def hostile(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(good)
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)  # no writer: opening it for reading the usual way waits forever
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:  # sparse: no disk used
        handle.write(good.read_bytes())
        handle.truncate(DEFAULT_MAX_FILE_BYTES + 1)
    return [str(good), str(fifo), "/dev/zero", str(loop), str(tmp_path), str(huge)]


def _within(seconds, work):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", work()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the decoder hung"
    return result["value"]


EXPECTED = ["not a regular file", "not a regular file", "symlink loop", "is a directory, not a file", "larger than the 64 MiB cap"]


def test_pillow_decoding_refuses_what_is_not_a_regular_file_of_sane_size(hostile):
    images, kept, errors = _within(60, lambda: decode_images(hostile, size=(8, 8)))
    assert list(kept) == [0] and images.shape == (1, 8, 8, 3)
    assert [reason.split(" (")[0] for _, reason in errors] == EXPECTED


def test_batched_jpeg_decoding_refuses_the_same(hostile):
    batches = _within(60, lambda: list(iter_tensor_batches(hostile, batch_size=8, size=(8, 8))))
    (indices, images, errors), = batches
    assert list(indices) == [0] and tuple(images.shape) == (1, 3, 8, 8)
    assert [reason.split(" (")[0] for _, reason in errors] == EXPECTED
