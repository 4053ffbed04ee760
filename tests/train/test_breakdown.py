"""Accuracy grouped by how clips were made: the groups, their counts and the table."""

import numpy as np
import pytest

from service.train.breakdown import (
    GROUPS,
    confusion,
    grouped_accuracy,
    main,
    plot_confusion,
    table,
    top_mistakes,
)


def row(label: str = "yes", speaker: str = "espeak-ng:en", snr: str = "", rt60: str = "",
        context: str | None = "") -> dict[str, str]:
    out = {"label": label, "speaker": speaker, "family": speaker.split(":")[0],
           "snr_db": snr, "rt60_s": rt60, "noise": "", "channel": ""}
    if context is not None:
        out["context"] = context
    return out


def test_snr_groups_are_clean_three_bands_and_non_speech() -> None:
    snr = GROUPS["snr"]
    assert [snr(row(snr=s)) for s in ("", "-3.1", "0.0", "9.9", "10.0")] == [
        "clean", "SNR < 0 dB", "SNR 0-10 dB", "SNR 0-10 dB", "SNR >= 10 dB"]
    assert snr(row(label="_silence_", speaker="")) == "(non-speech)"


def test_context_groups_read_datasets_made_before_the_column() -> None:
    context = GROUPS["context"]
    assert context(row(context="kitchen")) == "beside another word"
    assert context(row(context="")) == context(row(context=None)) == "alone"


def test_groups_cross_and_count_right_answers() -> None:
    pairs = [(row(rt60="0.5", snr="5"), "yes"), (row(rt60="0.5", snr="5"), "no"),
             (row(snr="15"), "yes"), (row(label="_silence_", speaker=""), "_silence_")]
    found = grouped_accuracy(iter(pairs), ["room", "snr"])
    assert found == {("room", "SNR 0-10 dB"): (1, 2), ("dry", "SNR >= 10 dB"): (1, 1),
                     ("(non-speech)", "(non-speech)"): (1, 1)}
    lines = table(found, ["room", "snr"]).splitlines()
    assert lines[0] == "| room | snr | clips | accuracy (%) |"
    assert "| room | SNR 0-10 dB | 2 | 50.0 |" in lines
    assert lines[-1] == "| all | | 4 | 75.0 |"


def test_an_empty_split_is_refused(tmp_path) -> None:
    from tests.model_store_builder import export_test_model

    model = export_test_model("full", tmp_path / "m" / "1", "m", seed=1)
    (tmp_path / "metadata.csv").write_text("path,label,split\na.wav,yes,train\n")
    with pytest.raises(SystemExit, match="no clips in split 'test'"):
        main(["--model", str(model), "--data", str(tmp_path), "--by", "label"])


def test_rows_run_from_clean_to_noisy_and_non_speech_last() -> None:
    found = {("SNR < 0 dB",): (0, 1), ("(non-speech)",): (1, 1), ("clean",): (1, 1),
             ("SNR 0-10 dB",): (0, 1), ("SNR >= 10 dB",): (1, 1)}
    assert [line.split(" | ")[0] for line in table(found, ["snr"]).splitlines()[2:]] == [
        "| clean", "| SNR >= 10 dB", "| SNR 0-10 dB", "| SNR < 0 dB", "| (non-speech)", "| all"]
    families = {("flite",): (1, 1), ("(non-speech)",): (1, 1), ("espeak-ng",): (1, 1)}
    assert [line.split(" | ")[0] for line in table(families, ["family"]).splitlines()[2:]] == [
        "| espeak-ng", "| flite", "| (non-speech)", "| all"]


def test_confusion_counts_true_against_predicted_and_ranks_mistakes() -> None:
    labels = ["yes", "no", "_unknown_"]
    pairs = [(row("yes"), "yes"), (row("yes"), "no"), (row("no"), "no"),
             (row("_unknown_"), "no"), (row("_unknown_"), "no"), (row("_unknown_"), "yes")]
    counts = confusion(pairs, labels)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 2, 0]]
    assert top_mistakes(counts, labels) == ["_unknown_ -> no: 2 of 3 (66.7 %)",
                                            "yes -> no: 1 of 2 (50.0 %)",
                                            "_unknown_ -> yes: 1 of 3 (33.3 %)"]


def test_confusion_refuses_a_label_the_model_does_not_have() -> None:
    with pytest.raises(ValueError, match="'maybe' is not one of the model's labels"):
        confusion([(row("maybe"), "yes")], ["yes", "no"])


def test_confusion_plot_is_written(tmp_path) -> None:
    path = tmp_path / "confusion.png"
    plot_confusion(path, np.array([[3, 1], [0, 4]]), ["yes", "no"], "a model")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_draws_the_confusion_of_every_clip(tmp_path, capsys) -> None:
    import soundfile as sf

    from tests.model_store_builder import SAMPLE_RATE, export_test_model

    model = export_test_model("full", tmp_path / "m" / "1", "m", seed=1)
    rows = ["path,label,split"]
    for i, label in enumerate(["yes", "no", "_silence_"]):
        sf.write(tmp_path / f"{i}.wav", np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
        rows.append(f"{i}.wav,{label},test")
    (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
    png = tmp_path / "confusion.png"
    assert main(["--model", str(model), "--data", str(tmp_path), "--by", "label",
                 "--confusion", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "most frequent mistakes:" in capsys.readouterr().out
