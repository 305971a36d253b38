"""Finding the registered generator that can render a probe set."""

from __future__ import annotations

from typing import Any

from frx_plugin.errors import CounterfactualError
from frx_plugin.interfaces import AttributeGenerator

def find_generator(probe: Any) -> tuple[str, AttributeGenerator] | None:
    """The first registered generator that can render ``probe`` (name, generator), or ``None``."""
    from frx_plugin.plugins import generators

    for name, registration in generators().items():
        generator = registration.factory(probe)
        if generator is not None:
            if not isinstance(generator, AttributeGenerator):
                raise CounterfactualError(
                    f"generator {name!r} returned {type(generator).__name__}, which lacks 'attributes' or 'counterfactual'"
                )
            return name, generator
    return None


def require_generator(probe: Any) -> tuple[str, AttributeGenerator]:
    found = find_generator(probe)
    if found is None:
        from frx_plugin.plugins import generators

        raise CounterfactualError(
            f"no generator can render {getattr(probe, 'source', type(probe).__name__)}: exact counterfactuals need a plugin "
            f"implementing the frx_register_generators hook for it (installed: {sorted(generators())}); "
            "or use the latent path (counterfactuals='latent' in the Lightning callback, --path latent in frx explain)"
        )
    return found
