"""Module parameter nodes without the Slicer application.

Slicer's ``ScriptedLoadableModuleLogic.getParameterNode`` needs the application (it lives in a module that
imports qt). This does the same with MRML alone, so a Logic can hand its parameter node to the panel's
``parameterNodeWrapper`` in Slicer and still be tested with slicer-core: one singleton
``vtkMRMLScriptedModuleNode`` per module, tagged with the module name, saved with the scene (so the
panel's choices persist between sessions).
"""

from __future__ import annotations


def parameter_node(module_name: str, scene=None):
    """The module's singleton parameter node in ``scene`` (default ``slicer.mrmlScene``), created if needed."""
    import slicer

    scene = scene or slicer.mrmlScene
    node = scene.GetSingletonNode(module_name, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(module_name)
        node.SetName(scene.GenerateUniqueName(module_name))
        node.SetAttribute("ModuleName", module_name)
        if hasattr(node, "SetModuleName"):
            node.SetModuleName(module_name)
        node = scene.AddNode(node)
    elif node.GetAttribute("ModuleName") != module_name:  # removed by a scene close
        node.SetAttribute("ModuleName", module_name)
    return node


class ModuleLogic:
    """Base of the NMAI Logic classes: a scene and the module's parameter node, no application needed.

    The module name is the class name without ``Logic`` (``NMAIDenoiseLogic`` -> ``NMAIDenoise``), as in
    Slicer's ``ScriptedLoadableModuleLogic``.
    """

    def __init__(self, scene=None):
        name = type(self).__name__
        self.moduleName = name[:-5] if name.endswith("Logic") else name
        self._scene = scene

    @property
    def scene(self):
        import slicer

        return self._scene or slicer.mrmlScene

    def getParameterNode(self):
        return parameter_node(self.moduleName, self.scene)
