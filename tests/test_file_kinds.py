"""A file given where an .npz or a .specc archive was expected is named by what it is, in both readers."""

import numpy as np
import pytest

from specc.api.saving import load_model
from specc.train.run import read_npz

KINDS = {
    "empty": (b"", "an empty file"),
    "hdf5": (b"\x89HDF\r\n\x1a\n" + b"\0" * 64, "an HDF5 file"),
    "npy": (None, "a single .npy array"),
    "text": (b"model:\n  type: Sequential\n", "a text file"),
    "binary": (bytes(range(200, 256)), "some other binary file"),
}


def _write(tmp_path, name):
    head, _ = KINDS[name]
    path = tmp_path / f"{name}.bin"
    if head is None:
        with open(path, "wb") as fh:
            np.save(fh, np.zeros(3, np.float32))
    else:
        path.write_bytes(head)
    return str(path)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_read_npz_says_what_the_file_is(tmp_path, name):
    path = _write(tmp_path, name)
    with pytest.raises(ValueError) as info:
        read_npz(path, "a weights .npz")
    assert f"{path} is not a weights .npz: it is {KINDS[name][1]}, not an .npz archive" == str(info.value)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_load_model_says_what_the_file_is(tmp_path, name):
    path = _write(tmp_path, name)
    with pytest.raises(ValueError, match=f"it is {KINDS[name][1]}"):
        load_model(path)
