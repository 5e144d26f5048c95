"""Static checks of the Slicer modules: CMake lists, .ui files, widget names, light module imports.

Slicer installs only what each module's CMakeLists.txt lists, so a file missing there works from the source
tree and breaks in the packaged extension. The module files themselves import qt/ctk/slicer, which only
exist inside Slicer: they are checked with ``ast``; their ``<Module>Lib`` packages are imported for real in a
subprocess.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["NMAIAttenuation", "NMAIDenoise", "NMAITriage"]
ALL_MODULE_DIRS = ["NMAIExtension", *MODULES]
HEAVY = {"torch", "monai", "scipy", "SimpleITK", "sklearn", "skimage", "pandas", "matplotlib", "safetensors",
         "onnxruntime", "dask", "pydicom"}
SKIP_DIRS = {"__pycache__", ".pytest_cache"}


# ------------------------------------------------------------------------------------------ CMake lists
def cmake_list(cmake_text: str, variable: str, module_name: str) -> list[str]:
    match = re.search(r"set\(\s*" + variable + r"\s+(.*?)\)", cmake_text, re.S)
    assert match, f"set({variable} ...) not found"
    entries = []
    for line in match.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries += [e.replace("${MODULE_NAME}", module_name) for e in line.split()]
    return entries


def files_on_disk(module_dir: Path) -> tuple[set[str], set[str]]:
    """(python files, other files) under a module folder, as paths relative to it."""
    scripts, resources = set(), set()
    for dirpath, dirnames, filenames in os.walk(module_dir):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")
                       and not d.startswith(".")]
        for name in filenames:
            if name.endswith((".pyc", ".pyo")) or name == "CMakeLists.txt" or name.startswith("."):
                continue
            rel = (Path(dirpath) / name).relative_to(module_dir).as_posix()
            (scripts if name.endswith(".py") else resources).add(rel)
    return scripts, resources


@pytest.mark.parametrize("module", ALL_MODULE_DIRS)
def test_cmake_lists_every_file_of_the_module(module):
    module_dir = ROOT / module
    text = (module_dir / "CMakeLists.txt").read_text()
    assert re.search(r"set\(MODULE_NAME\s+" + module + r"\)", text)
    assert "slicerMacroBuildScriptedModule(" in text
    listed_scripts = cmake_list(text, "MODULE_PYTHON_SCRIPTS", module)
    listed_resources = cmake_list(text, "MODULE_PYTHON_RESOURCES", module)
    assert len(listed_scripts) == len(set(listed_scripts)), "duplicate entries in MODULE_PYTHON_SCRIPTS"
    scripts, resources = files_on_disk(module_dir)
    missing_scripts = sorted(scripts - set(listed_scripts))
    missing_resources = sorted(resources - set(listed_resources))
    assert not missing_scripts, f"add to MODULE_PYTHON_SCRIPTS in {module}/CMakeLists.txt:\n  " + \
        "\n  ".join(missing_scripts)
    assert not missing_resources, f"add to MODULE_PYTHON_RESOURCES in {module}/CMakeLists.txt:\n  " + \
        "\n  ".join(missing_resources)
    stale = sorted(p for p in listed_scripts + listed_resources if not (module_dir / p).is_file())
    assert not stale, f"listed in {module}/CMakeLists.txt but missing on disk: {stale}"
    assert all(p.endswith(".py") for p in listed_scripts)


def test_engine_ships_inside_the_extension():
    text = (ROOT / "NMAIExtension" / "CMakeLists.txt").read_text()
    scripts = cmake_list(text, "MODULE_PYTHON_SCRIPTS", "NMAIExtension")
    for required in ("nmai/__init__.py", "nmai/__main__.py", "nmai/cli/__init__.py", "NMAIExtensionLib/task.py",
                     "NMAIExtensionLib/runner.py", "NMAIExtension.py"):
        assert required in scripts


def test_top_level_cmake_declares_the_extension():
    text = (ROOT / "CMakeLists.txt").read_text()
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(r"set\(" + variable + r"\s+\S", text), variable
    assert re.search(r'set\(EXTENSION_CATEGORY\s+"Nuclear Medicine"\)', text)
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"?PyTorch"?\)', text)
    assert "find_package(Slicer REQUIRED)" in text and "include(${Slicer_USE_FILE})" in text
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text and "include(${Slicer_EXTENSION_CPACK})" in text
    subdirs = re.findall(r"add_subdirectory\((\w+)\)", text)
    assert sorted(subdirs) == sorted(ALL_MODULE_DIRS)
    # modules must come after find_package and before the packaging includes
    assert text.index("find_package(Slicer") < text.index("add_subdirectory(") < text.index("Slicer_EXTENSION_CPACK")


# ------------------------------------------------------------------------------------------ module files
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def top_level_imports(tree: ast.Module) -> set[str]:
    """Root package names imported when the file is imported (module level, incl. if/try blocks)."""
    names = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                visit(getattr(node, "finalbody", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
    visit(tree.body)
    return names


def ui_widgets(module: str) -> tuple[ET.Element, dict[str, str], dict[str, str]]:
    """(root, {objectName: class}, {objectName: SlicerParameterName})."""
    root = ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui").getroot()
    widgets, bound = {}, {}
    for widget in root.iter("widget"):
        widgets[widget.get("name")] = widget.get("class")
        prop = widget.find("./property[@name='SlicerParameterName']/string")
        if prop is not None:
            bound[widget.get("name")] = prop.text
    return root, widgets, bound


def wrapper_parameters(tree: ast.Module, module: str) -> set[str]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == f"{module}ParameterNode":
            assert any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list)
            return {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)}
    raise AssertionError(f"{module}.py has no @parameterNodeWrapper class {module}ParameterNode")


@pytest.mark.parametrize("module", MODULES)
def test_module_file_structure(module):
    tree = parse(ROOT / module / f"{module}.py")
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {module, f"{module}Widget", f"{module}Test", f"{module}ParameterNode"} <= classes
    logic = parse(ROOT / module / f"{module}Lib" / "logic.py")
    assert f"{module}Logic" in {n.name for n in logic.body if isinstance(n, ast.ClassDef)}


@pytest.mark.parametrize("module", MODULES)
def test_ui_file_is_valid_and_matches_the_code(module):
    root, widgets, bound = ui_widgets(module)
    assert root.tag == "ui" and root.findtext("class") == module
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == module
    tree = parse(ROOT / module / f"{module}.py")
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    assert used, "the widget uses no self.ui.<name>?"
    missing = sorted(used - set(widgets))
    assert not missing, f"{module}.py uses self.ui.{missing} but {module}.ui has no widget with that objectName"
    parameters = wrapper_parameters(tree, module)
    assert set(bound.values()) <= parameters, f"SlicerParameterName not in the wrapper: {set(bound.values()) - parameters}"
    assert parameters <= set(bound.values()), f"parameters without a widget: {parameters - set(bound.values())}"
    # every node selector gets the scene
    for name, cls in widgets.items():
        if cls == "qMRMLNodeComboBox":
            assert any(c.findtext("receiver") == name and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
                       for c in root.iter("connection")), f"{name} is not connected to mrmlSceneChanged"
    # the progress bar and Cancel button every task panel has
    assert {"progressBar", "cancelButton"} <= set(widgets)


def test_triage_panel_buttons():
    _, widgets, _ = ui_widgets("NMAITriage")
    buttons = sorted(name for name, cls in widgets.items() if cls in ("QPushButton", "QToolButton"))
    assert buttons == ["applyButton", "cancelButton", "checkInputButton", "monitorStartButton", "monitorStopButton"]


@pytest.mark.parametrize("module", MODULES)
def test_icons_are_distinct_128_pngs(module):
    from PIL import Image

    path = ROOT / module / "Resources" / "Icons" / f"{module}.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (128, 128)
    others = [ROOT / m / "Resources" / "Icons" / f"{m}.png" for m in MODULES if m != module]
    assert all(path.read_bytes() != other.read_bytes() for other in others)


# ------------------------------------------------------------------------------------------ light imports
@pytest.mark.parametrize("path", [f"{m}/{m}.py" for m in MODULES] + ["NMAIExtension/NMAIExtension.py"])
def test_module_files_import_nothing_heavy_at_top_level(path):
    heavy = top_level_imports(parse(ROOT / path)) & HEAVY
    assert not heavy, f"{path} imports {heavy} at module level; import them inside the functions that need them"


def test_shared_library_needs_no_gui_except_gui_module():
    for path in (ROOT / "NMAIExtension" / "NMAIExtensionLib").glob("*.py"):
        imports = top_level_imports(parse(path))
        if path.name == "gui.py":
            continue
        assert not imports & HEAVY, f"{path.name} imports {imports & HEAVY} at module level"
        assert "qt" not in imports and "ctk" not in imports, path.name


def test_logic_packages_import_light_in_a_fresh_interpreter():
    code = "\n".join([
        "import sys, time",
        f"sys.path[:0] = {[str(ROOT / d) for d in ALL_MODULE_DIRS]!r}",
        "t = time.perf_counter()",
        "import NMAIExtensionLib, NMAIExtensionLib.mrml, NMAIExtensionLib.outputs, NMAIExtensionLib.task",
        "import NMAIExtensionLib.messages, NMAIExtensionLib.parameters",
        "import NMAIDenoiseLib, NMAIAttenuationLib, NMAITriageLib",
        "elapsed = time.perf_counter() - t",
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY | {'qt', 'ctk'})!r})",
        "print(repr((heavy, elapsed)))",
    ])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    heavy, elapsed = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert heavy == [], f"importing the Logic packages imported {heavy}"
    assert elapsed < 10.0
