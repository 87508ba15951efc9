#!/usr/bin/env bash
# Refresh the vendored ONNX Runtime Web from the npm registry: only the files the page loads
# (the WASM build: its loader, the SIMD+threads module and binary), its licence, version and checksums.
# Usage: bash ferkit/web/vendor/update.sh [VERSION]   (default: the version in onnxruntime-web/VERSION)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="$here/onnxruntime-web"
version="${1:-$(cat "$target/VERSION")}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "onnxruntime-web@$version" >/dev/null && tar xzf "onnxruntime-web-$version.tgz")
files=(ort.wasm.min.js ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm)
rm -rf "$target.new" && mkdir -p "$target.new"
for f in "${files[@]}"; do cp "$work/package/dist/$f" "$target.new/$f"; done
# The npm package carries no licence file; its package.json says "MIT" and each file's header
# "Copyright (c) Microsoft Corporation. Licensed under the MIT License.": the licence, written out.
license="$(cd "$work/package" && node -p 'require("./package.json").license')"
[ "$license" = "MIT" ] || { echo "onnxruntime-web $version is licensed $license, not MIT: check before vendoring" >&2; exit 1; }
cat > "$target.new/LICENSE" <<'LICENSE'
onnxruntime-web (https://www.npmjs.com/package/onnxruntime-web), MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
LICENSE
echo "$version" > "$target.new/VERSION"
(cd "$target.new" && sha256sum "${files[@]}" LICENSE > SHA256SUMS)
rm -rf "$target" && mv "$target.new" "$target"
echo "onnxruntime-web $version -> $target"
