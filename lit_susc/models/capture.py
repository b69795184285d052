"""Hook-and-stop capture: tensors from inside a forward pass that ends once the last one is taken.

The prefix cache (the residual stream entering block l, the output of a branch) and the residual
features (block inputs and outputs) both need activations of the first part of a model and
nothing after them. Hooks store the tensors; the hook of the last one needed raises
``StopForward``, which ``Capture.run`` catches, so no later block, final norm or head runs.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

if TYPE_CHECKING:
    from typing_extensions import Self


class StopForward(Exception):
    """Raised by a hook of ``capture`` to end the forward pass it was run for."""

    def __init__(self, capture: Capture) -> None:
        super().__init__()
        self.capture = capture


class Capture:
    """Hooks on modules of a model that store a module's input or output under a key.

    Register with ``input_of`` / ``output_of`` (``stop=True`` on the last tensor needed), then
    ``run(forward)`` returns the stored tensors; ``remove`` (or leaving a ``with`` block) takes the
    hooks off.
    """

    def __init__(self) -> None:
        self._values: dict[Hashable, Tensor] = {}
        self._handles: list[Any] = []

    def input_of(self, module: nn.Module, key: Hashable, stop: bool = False) -> None:
        """Store the hidden state ``module`` is called with: its first positional argument, or
        ``hidden_states`` when a model passes it by name."""
        def hook(_module, args, kwargs):
            self._values[key] = args[0] if args else kwargs["hidden_states"]
            if stop:
                raise StopForward(self)

        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def output_of(self, module: nn.Module, key: Hashable, stop: bool = False) -> None:
        """Store ``module``'s output (the first element when it returns a tuple)."""
        def hook(_module, args, output):
            self._values[key] = output[0] if isinstance(output, tuple) else output
            if stop:
                raise StopForward(self)

        self._handles.append(module.register_forward_hook(hook))

    def run(self, forward: Callable[[], object]) -> dict[Hashable, Tensor]:
        """Call ``forward`` (a forward pass of the hooked model) and return what the hooks stored."""
        try:
            forward()
        except StopForward as stop:
            if stop.capture is not self:  # another capture's stop: its own run is to catch it
                raise
        finally:
            values, self._values = self._values, {}
        return values

    def remove(self) -> None:
        """Take the hooks off the model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
