"""Packaging beyond pyproject.toml: the configs. conf/ stays at the repository's top level (Hydra's layout, what a
checkout trains from); a wheel ships it inside the package as vqacap/conf, where `vqacap.configs.CONFIG_DIR` finds it
when vqacap is installed without the checkout (`pip install .`, `pip install vqacap-*.whl`)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["vqacap", "vqacap.*"]), "vqacap.conf"],
    package_dir={"vqacap.conf": "conf"},
    package_data={"vqacap": ["py.typed"], "vqacap.published": ["data/*.txt", "data/*.gz"], "vqacap.demo": ["page.html"], "vqacap.conf": ["*.yaml", "**/*.yaml"]},
)
