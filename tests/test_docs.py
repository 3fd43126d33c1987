"""The project stands alone: nothing cites a design document it does not ship, and every
`CONTRIBUTING.md, "Section" > "Sub-section"` citation names headings that exist."""
import re
import subprocess

DESIGN = "DESIGN" + ".md"  # spelt in two parts so that this file does not cite it
SKIPPED = (".git", ".venv", "__pycache__", ".ruff_cache", ".hypothesis", ".pytest_cache")


def _repository_files(root):
    """Tracked and untracked-but-not-ignored files (git's view), else every file outside .venv*."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=root, capture_output=True, check=True).stdout
        paths = [root / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = list(root.rglob("*"))
    return [p for p in paths if p.is_file() and not any(
        part.startswith(SKIPPED) for part in p.relative_to(root).parts)]


def test_no_file_cites_a_design_document_the_repository_lacks(root):
    files = _repository_files(root)
    assert any(p.name == "models.py" for p in files) and len(files) > 50  # the walk found the repository
    citing = [str(p.relative_to(root)) for p in files if DESIGN.encode() in p.read_bytes()]
    assert citing == [], f"{DESIGN} is not part of the repository, yet {citing} cite it"


def test_citations_of_contributing_name_its_sections(root):
    headings = re.findall(r"^(#{2,3}) (.+)$", (root / "CONTRIBUTING.md").read_text(), re.MULTILINE)
    cited = []
    for path in sorted((root / "course_utils").rglob("*.py")):
        text = " ".join(path.read_text().split())
        for section, sub in re.findall(r'CONTRIBUTING\.md,? \(?"([^"]+)" > "([^"]+)"', text):
            cited.append(path.name)
            sections = [t for level, t in headings if level == "##"]
            assert section in sections, f"{path.name} cites CONTRIBUTING.md section {section!r}: not among {sections}"
            body = re.split(r"^## ", (root / "CONTRIBUTING.md").read_text(), flags=re.MULTILINE)
            body = next(b for b in body if b.startswith(section + "\n"))
            assert re.search(rf"^### {re.escape(sub)}$", body, re.MULTILINE), \
                f"{path.name} cites {section!r} > {sub!r}: no such sub-section under {section!r}"
    assert {"__init__.py", "hub.py", "models.py"} <= set(cited)  # grade/__init__.py among them
