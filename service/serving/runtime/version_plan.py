"""Which versions will serve, decided before anything loads: how many the thread plan
divides the cores by, and whether the default model can ever serve (see
``model_repository`` for the policy and the startup check)."""

from collections import defaultdict
from pathlib import Path

from service.config import Settings, VersionPolicy
from service.serving.runtime.model_store import StoreEntry, model_names


def planned_versions(policy: VersionPolicy, entries: list[StoreEntry]) -> int:
    """How many model versions the policy will serve, of the scanned ``entries``: the number
    the thread plan divides the cores by (under ``latest`` one per model with a loadable
    version, however many versions the store holds)."""
    loadable: dict[str, list[int]] = defaultdict(list)
    for e in entries:
        if e.ok:
            loadable[e.name].append(e.version)
    return sum(policy.served_count(versions) for versions in loadable.values())


def missing_default_model(settings: Settings) -> str | None:
    """Why ``default_model`` can never serve, whatever loads: the store has no directory for
    it, or the ``models`` setting leaves it out. None when it is there."""
    name, root = settings.default_model, Path(settings.model_store).resolve()
    present = model_names(root)
    if name in present and (not settings.models or name in settings.models):
        return None
    held = ", ".join(present) or "none"
    if name in present:
        return (f"default_model {name!r} is left out by the models setting "
                f"({','.join(settings.models)}); the model store {root} holds: {held}")
    return f"default_model {name!r} is not in the model store {root}; models present: {held}"
