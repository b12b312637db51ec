#!/usr/bin/env bash
# Builds dist/paddock_<version>_amd64.deb (make deb): static binaries,
# shell completions and man pages generated from the CLI, a changelog entry
# for this commit, then nfpm (pinned, run through the Go module proxy).
# Prints the .deb's path. Environment: VERSION (the binaries' version, as
# the Makefile's), DEB_VERSION (the package's, without the -1 revision),
# NFPM (a command to use instead of `go run nfpm@pinned`).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"

NFPM_VERSION=v2.48.0
GO=${GO:-go}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH

# Debian versions start with a digit: a tag v1.2.3[-N-gHASH][-dirty] gives
# 1.2.3[+N.gHASH][+dirty]; no tag gives 0.0~gitYYYYMMDD.HASH[+dirty].
deb_version() {
	local v=$1 dirty=""
	if [[ $v == *-dirty ]]; then
		v=${v%-dirty}
		dirty=+dirty
	fi
	if [[ $v =~ ^v?([0-9]+\.[0-9][0-9A-Za-z.~]*)(-([0-9]+)-(g[0-9a-f]+))?$ ]]; then
		v=${BASH_REMATCH[1]}
		[[ -n ${BASH_REMATCH[3]} ]] && v+="+${BASH_REMATCH[3]}.${BASH_REMATCH[4]}"
	else
		v="0.0~git$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d).${v//[^0-9A-Za-z.]/.}"
	fi
	echo "$v$dirty"
}
DEB_VERSION=${DEB_VERSION:-$(deb_version "$VERSION")}
export PADDOCK_DEB_VERSION=$DEB_VERSION

stage=dist/.stage
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/completions" "$stage/man"

# Static (CGO_ENABLED=0) and stripped: lintian's unstripped-binary-or-object;
# statically-linked-binary is overridden (packaging/deb/lintian-overrides).
CGO_ENABLED=0 "$GO" build -trimpath \
	-ldflags "-s -w -X github.com/paddock-vm/paddock/version.Version=$VERSION" \
	-o "$stage/bin/" ./cmd/paddockd ./cmd/paddock ./cmd/paddock-agent

cli=$stage/bin/paddock
"$cli" completion bash >"$stage/completions/paddock.bash"
"$cli" completion zsh >"$stage/completions/_paddock"
"$cli" completion fish >"$stage/completions/paddock.fish"
"$cli" manpage | gzip -9n >"$stage/man/paddock.1.gz"
gzip -9n <packaging/man/paddockd.8 >"$stage/man/paddockd.8.gz"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
{
	printf 'paddock (%s-1) unstable; urgency=medium\n\n' "$DEB_VERSION"
	printf '  * Built from paddock commit %s (version %s).\n\n' "$commit" "$VERSION"
	printf ' -- paddock <dev@paddock.invalid>  %s\n' "$(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$stage/changelog.Debian.gz"

# nfpm's umask-independent modes come from the config; make the staged
# inputs' own modes sane anyway.
chmod 0755 "$stage"/bin/*
chmod 0644 "$stage"/completions/* "$stage"/man/* "$stage/changelog.Debian.gz"

deb=dist/paddock_${DEB_VERSION}-1_amd64.deb
rm -f "$deb"
if [[ -n ${NFPM:-} ]]; then
	# shellcheck disable=SC2086 # NFPM may be a command with arguments
	$NFPM package --config packaging/deb/nfpm.yaml --packager deb --target "$deb" >&2
else
	"$GO" run "github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION" \
		package --config packaging/deb/nfpm.yaml --packager deb --target "$deb" >&2
fi
echo "$deb"
