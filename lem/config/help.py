"""``python -m lem --help``: lem's groups and options and the composed config, in about a third of a second.

Hydra's own help asks its config loader for the options of every group, Hydra's and its plugins'
included, copying the whole config store each time (seconds). lem's groups are folders of
``conf/`` (and the engine registry for ``backend``), so they are listed from there; the composed config comes from one compose call.
The header and footer are those of ``conf/hydra/help/lem.yaml``, the same text Hydra would show.
"""

from __future__ import annotations

from pathlib import Path

LAUNCHERS_FROM_PLUGINS = ("basic", "joblib", "submitit_local", "submitit_slurm")


def group_options(conf_dir: Path) -> dict[str, list[str]]:
    """Every group's options: the YAML files of ``conf/<group>/``, and for ``backend`` the registered engines and their presets."""
    from lem.backends.registry import ENGINES

    backends = {name for name, engine in ENGINES.items() for name in (name, *engine.presets)}

    folders = {p.name for p in conf_dir.iterdir() if p.is_dir() and p.name != "hydra"} | {"backend"}
    groups: dict[str, list[str]] = {}
    for name in sorted(folders):
        options = {f.stem for f in (conf_dir / name).glob("*.yaml")}
        groups[name] = sorted(options | backends if name == "backend" else options)
    launchers = conf_dir / "hydra" / "launcher"
    if launchers.is_dir():
        groups["hydra/launcher"] = sorted({f.stem for f in launchers.glob("*.yaml")} | set(LAUNCHERS_FROM_PLUGINS))
    return groups


def render_help(conf_dir: Path, overrides: list[str]) -> str:
    import yaml
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from lem.config.schema import register_schema

    text = yaml.safe_load((conf_dir / "hydra" / "help" / "lem.yaml").read_text())
    register_schema()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    groups = "\n".join(f"{name}: {', '.join(options)}" for name, options in group_options(conf_dir).items())
    return (
        text["template"]
        .replace("${hydra.help.header}", text["header"])
        .replace("${hydra.help.footer}", text["footer"])
        .replace("$APP_CONFIG_GROUPS", groups + "\n")
        .replace("$CONFIG", OmegaConf.to_yaml(cfg))
    )
