"""A failed export check names the file, the output, the batch size, the difference and the
likeliest cause."""

import pytest
import torch
from torch import Tensor, nn

from service.errors import ExportCheckError
from service.export import export_model_dir
from service.export.checks import difference
from service.frontend import LogMel
from tests.export.conftest import LABELS, T, TinyCNN, diffres_modules


class DropoutLeftOn(TinyCNN):
    def forward(self, feature: Tensor) -> Tensor:
        return super().forward(nn.functional.dropout(feature, 0.5, training=True))


class BatchCentred(TinyCNN):
    """Subtracts the batch mean: an item's answer depends on its neighbours."""

    def forward(self, feature: Tensor) -> Tensor:
        logits = self.head(torch.relu(self.conv(feature)).mean(dim=(2, 3)) * 10.0)
        return logits - logits.mean(dim=0, keepdim=True)


class ShapeBranch(TinyCNN):
    """A Python branch on the batch size: the ONNX trace freezes the traced batch's branch."""

    def forward(self, feature: Tensor) -> Tensor:
        logits = self.head(torch.relu(self.conv(feature)).mean(dim=(2, 3)) * 10.0)
        return logits * 2.0 if feature.shape[0] == 2 else logits


def test_failed_check_names_output_batch_difference_and_cause(tmp_path):
    compressor, _ = diffres_modules()
    with pytest.raises(ExportCheckError, match=(
            r"model.onnx: output 'probabilities' differs from eager PyTorch by [0-9.e-]+ "
            r"\(tolerance 0.0001\) at batch size (1|3|17); likely cause: .*traced at \(2\)")):
        export_model_dir(compressor, ShapeBranch(3), LogMel(), tmp_path / "m" / "1", "m", 1,
                         LABELS, formats=["onnx"])
    assert not (tmp_path / "m" / "1").exists()


def test_randomness_left_in_eval_mode_is_refused(tmp_path):
    compressor, _ = diffres_modules()
    with pytest.raises(ExportCheckError, match="differs between two eager runs .* randomness"):
        export_model_dir(compressor, DropoutLeftOn(3), LogMel(), tmp_path / "m" / "1", "m", 1,
                         LABELS, formats=["onnx"])


def test_a_model_whose_answer_depends_on_its_batch_is_refused(tmp_path):
    compressor, _ = diffres_modules()
    with pytest.raises(ExportCheckError, match=(
            r"model: output 'probabilities' of an item alone differs by [0-9.e-]+ from the same "
            r"item in a batch of (3|17)")):
        export_model_dir(compressor, BatchCentred(3), LogMel(), tmp_path / "m" / "1", "m", 1,
                         LABELS, formats=["onnx"])


def test_window_length_comes_from_the_compressor_or_the_caller(tmp_path):
    compressor, classifier = diffres_modules()
    manifest = export_model_dir(compressor, classifier, LogMel(), tmp_path / "m" / "1", "m", 1,
                                LABELS, formats=["onnx"])
    assert manifest.compressor.in_t_dim == T


def _rows_off(rows: int, off: int, by: float = 3.0) -> tuple[Tensor, Tensor]:
    """An [1, rows, 4] map and a copy with ``off`` of its rows moved by ``by``."""
    expected = torch.zeros(1, rows, 4)
    actual = expected.clone()
    actual[0, :off, 0] = by
    return expected, actual


def test_a_moved_step_boundary_is_not_a_failed_export():
    expected, actual = _rows_off(rows=120, off=2)  # the rows on both sides of one boundary
    assert difference("maxpool", expected, actual) == 0.0
    assert difference("avgpool", expected, actual) == 0.0


def test_step_pooled_outputs_still_fail_when_many_rows_differ():
    expected, actual = _rows_off(rows=120, off=10)
    assert difference("maxpool", expected, actual) == 3.0


def test_other_outputs_allow_no_outlier():
    expected, actual = _rows_off(rows=120, off=1)
    assert difference("resolution_enc", expected, actual) == 3.0
