#!/bin/sh
# Refresh the vendored on-screen keyboard (docs/ui.md, "The on-screen keyboard"):
# simple-keyboard's built UMD script and style sheet, and the Chinese (pinyin) layout of
# simple-keyboard-layouts turned from an ES module into a plain script (the pages' CSP
# allows scripts from the station only, and no bundler runs here).
#   web/static/vendor/update.sh [SK_VERSION] [LAYOUTS_VERSION]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
sk=${1:-3.8.192}
layouts=${2:-3.4.265}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "simple-keyboard@$sk" "simple-keyboard-layouts@$layouts" >/dev/null
mkdir sk skl
tar xzf "simple-keyboard-$sk.tgz" -C sk --strip-components=1
tar xzf "simple-keyboard-layouts-$layouts.tgz" -C skl --strip-components=1
out="$here/simple-keyboard"
mkdir -p "$out"
cp sk/build/index.js "$out/index.js"
cp sk/build/css/index.css "$out/index.css"
cp sk/LICENSE "$out/LICENSE"
cp skl/LICENSE "$out/LICENSE-layouts"
{
  printf '/* simple-keyboard-layouts %s, layouts/chinese.js (MIT, see LICENSE-layouts) */\n' "$layouts"
  sed -e 's/^export default /window.SimpleKeyboardChinese = /' skl/build/layouts/chinese.js
} >"$out/chinese.js"
printf 'simple-keyboard %s\nsimple-keyboard-layouts %s\n' "$sk" "$layouts" >"$out/VERSIONS"
