"""Datasets named on the command line: ``NAME=LAYOUT:ROOT[:SPLIT]``.

``train_net.py --dataset my_train=avsbench_ms3:/data/my_tree:train`` registers ``my_train``
with :func:`register_avs_dataset` in every process it launches, so a user trains on a tree or
manifest of their own without writing Python.
"""
from detectron2.data import DatasetCatalog

from .register import LAYOUTS, register_avs_dataset
from ...utils import ConfigError

__all__ = ["parse_dataset_spec", "register_dataset_specs", "SPLITS"]

SPLITS = ("train", "val", "test")
SPEC_FORMAT = "NAME=LAYOUT:ROOT[:SPLIT]"

# Specs registered by this process, so that running main() twice (tests, notebooks) with the
# same --dataset is not a name clash.
_registered = {}


def parse_dataset_spec(spec):
    """``"NAME=LAYOUT:ROOT[:SPLIT]"`` -> (name, layout, root, split or None).

    ROOT may itself contain ":"; a last field that is a split name is taken as SPLIT.
    """
    name, sep, rest = spec.partition("=")
    layout, _, location = rest.partition(":")
    if not sep or not name or not location:
        raise ConfigError("--dataset {!r}: expected {}, e.g. my_train=avsbench_ms3:/data/my_tree:"
                          "train".format(spec, SPEC_FORMAT))
    if layout not in LAYOUTS:
        raise ConfigError("--dataset {!r}: unknown layout {!r}; use one of {}".format(
            spec, layout, ", ".join(sorted(LAYOUTS))))
    root, _, split = location.rpartition(":")
    if not root or split not in SPLITS:
        root, split = location, None
    return name, layout, root, split


def register_dataset_specs(specs):
    """Register every ``NAME=LAYOUT:ROOT[:SPLIT]`` of ``specs``; returns the names."""
    names = []
    for spec in specs:
        name, layout, root, split = parse_dataset_spec(spec)
        if _registered.get(name) == spec:
            names.append(name)
            continue
        if name in DatasetCatalog.list():
            raise ConfigError("--dataset {!r}: the name {!r} is already registered (a built-in "
                              "dataset or an earlier --dataset); choose another NAME".format(
                                  spec, name))
        register_avs_dataset(name, root, layout, split=split)
        _registered[name] = spec
        names.append(name)
    return names
