"""The README stays true: its two set-up commands and its Python example."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opens_with_the_two_setup_commands():
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    demo, tests = blocks[0].strip(), blocks[1].strip()
    assert "pip install -e ." in demo and "cosi-imaging demo" in demo
    assert 'pip install -e ".[test]"' in tests and "pytest" in tests
    # CI reads the test command from the line after this marker
    assert text.index("<!-- test-command -->") < text.index(tests)


def python_example(heading):
    return re.search(rf"## {heading}\n.*?```python\n(.*?)```", README.read_text(), flags=re.S).group(1)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(python_example("A 3ML fit with the plugin"), "README example", "exec"), namespace)
    results = namespace["results"][0]
    assert "bulge.spectrum.main.Gaussian.F" in results.index
    assert "cosi_albedo_norm" in results.index
    # the datasets example opens the dataset the first one simulated
    exec(compile(python_example("Datasets and estimators"), "README datasets example", "exec"), namespace)
    assert namespace["image"].axes.labels.tolist() == ["lb", "Ei"]
    assert namespace["cosi"].dataset is namespace["dataset"]
