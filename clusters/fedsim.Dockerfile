# The image clusters/kuberay.yaml runs on the Ray head and on every GPU worker: Ray's CUDA image with the pinned
# torch and fedsim installed from this checkout, so all pods run the same code. Kubernetes pods cannot mount
# your checkout the way `ray up` syncs it (clusters/ray-up.yaml), hence an image. From the repository root:
#
#   docker build -f clusters/fedsim.Dockerfile -t fedsim:0.1.0-ray2.60.0-py311-gpu .
#   docker tag fedsim:0.1.0-ray2.60.0-py311-gpu REGISTRY/fedsim:0.1.0-ray2.60.0-py311-gpu   # then docker push,
#   # and use that name in clusters/kuberay.yaml; or, on kind: kind load docker-image fedsim:0.1.0-ray2.60.0-py311-gpu
#
# The tag names fedsim's version (setup.py), Ray's and Python's; clusters/kuberay.yaml's `rayVersion` must be
# this image's Ray. The build context is filtered by clusters/fedsim.Dockerfile.dockerignore (BuildKit reads
# <Dockerfile>.dockerignore next to the Dockerfile), which leaves out what .gitignore leaves out.

# Same Ray and Python as clusters/ray-up.yaml's images.
FROM rayproject/ray:2.60.0-py311-gpu

# The CUDA build of the Makefile's TORCH_PIN (PyPI's Linux wheel), installed before fedsim so that fedsim's
# `torch>=2.4` is already satisfied; it also runs on the CPU-only head pod.
RUN pip install --no-cache-dir torch==2.13.0

# The checkout (scenarios/ and clusters/ included, so the driver can run `fedsim run` on the head pod).
WORKDIR /home/ray/fedsim
COPY --chown=ray:users . .
RUN pip install --no-cache-dir -e ".[gpu]" && fedsim --help > /dev/null   # [gpu]: bitsandbytes (a QLoRA base)
