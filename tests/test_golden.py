"""The golden texts in tests/data/golden/ are what the numpy reference prints, byte for byte:
every port's own unit tests read them, so they must never be typed or edited by hand."""
from orchestrator.ports import golden


def test_every_golden_file_is_what_the_reference_prints(stories260k, tmp_path):
    for case in golden.CASES:
        path = golden.GOLDEN_DIR / case.name
        assert path.exists(), f"{path} missing: run `invoke golden`"
        want = golden.text(case, stories260k, tmp_path)
        assert path.read_bytes() == want, f"{case.name} differs from the reference: run `invoke golden`"
    assert (golden.GOLDEN_DIR / "README.md").read_text() == golden.readme()


def test_golden_texts_are_whole_runs_not_prefixes():
    for case in golden.CASES:
        text = (golden.GOLDEN_DIR / case.name).read_bytes()
        assert text.endswith(b"\n") and len(text) > 200, case.name  # a run's whole stdout
    assert (golden.GOLDEN_DIR / "stories260K.f32.prompt.txt").read_bytes().startswith(b"Once upon a time, there was a")
