"""densecap: dense captioning (FCLN), whole-image captioning and region retrieval in PyTorch."""
from setuptools import find_packages, setup

setup(
    name="densecap",
    version="0.1.0",
    description="Dense captioning (FCLN), image captioning (NIC, Show-Attend-Tell) and region retrieval",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["densecap", "densecap.*"]),
    include_package_data=True,
    package_data={
        "densecap.data": ["schemas/*.json"],  # the JSON Schemas of the dataset layouts (docs/DATASETS.md)
        "densecap.serve": ["static/*"],  # the web page (HTML/JS/CSS), served offline
    },
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "fvcore>=0.1.5",
        "pycocotools>=2.0.7",
        "pycocoevalcap>=1.2",
        "opencv-python>=4.8",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "pillow>=9.0",
        "numpy>=1.24",
        "pyyaml>=6.0",
        # Torch7 checkpoints of the original DenseCap
        "torchfile>=0.1.0",
        # the HTTP service
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "python-multipart>=0.0.9",
        "prometheus-client>=0.20",
        # large retrieval indexes and export
        "faiss-cpu>=1.8",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        # dataset validation against the shipped JSON Schemas
        "jsonschema>=4.0",
    ],
    extras_require={
        "dev": ["pytest>=7.0", "pytest-timeout>=2.1", "psutil>=5.9", "httpx>=0.27", "selenium>=4.20",
                "import-linter>=2.0"],
    },
)
