"""Packaging for the national value-added release engine (package `valueadded`, code in lib/)."""

from setuptools import find_packages, setup

setup(
    name="valueadded",
    version="0.1.0",
    description="National school value-added release engine on PySpark and Delta Lake",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    package_data={"valueadded.report": ["templates/*.html"]},
    python_requires=">=3.11",
    # Ranges here; exact pins for reproducible installs are in requirements.txt.
    install_requires=[
        "pyspark>=4.0,<4.1",
        "delta-spark>=4.0,<4.1",
        "deltalake>=1.1,<1.2",
        "pandas>=2.2,<2.3",
        "numpy>=2.2,<2.3",
        "pyarrow>=19,<20",
        "scipy>=1.15,<1.16",
        "threadpoolctl>=3.5,<4",
        "PyYAML>=6.0,<7",
        "matplotlib>=3.11,<3.12",
        "Jinja2>=3.1,<4",
    ],
    entry_points={"console_scripts": ["valueadded=valueadded.cli:main"]},
)
