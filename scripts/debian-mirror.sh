# Sourced by scripts/install-nats.sh and scripts/images.sh (bash): defines `debian_mirror`. Nothing runs on source.
# The repository names no package-registry host: every Debian download goes where the machine's own apt goes.

# Prints the URL of the Debian archive the machine's own apt uses (its mirror, or its local proxy's URL), so this
# script reaches Debian the way the machine does. MUSTER_DEBIAN_MIRROR overrides it. The archive is the first
# `deb` source, one-line (`sources.list`, `*.list`) or deb822 (`*.sources`), whose suite is a Debian release
# (`bookworm`, `trixie`, `stable`, ... — not `-security`, `-updates` or `-backports`, which live elsewhere or
# lack most packages) and whose components include `main`; third-party repositories name other suites.
debian_mirror() {
    if [[ -n "${MUSTER_DEBIAN_MIRROR:-}" ]]; then
        echo "${MUSTER_DEBIAN_MIRROR%/}"
        return 0
    fi
    local files=() f
    [[ -r /etc/apt/sources.list ]] && files+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -r "$f" ]] && files+=("$f")
    done
    ((${#files[@]} > 0)) || return 1
    awk '
        function release(suite) {
            return suite ~ /^(stable|testing|unstable|sid|oldstable|buster|bullseye|bookworm|trixie|forky|duke)$/
        }
        function consider(types, uris, suites, comps,    n, i, s, u) {
            if (types !~ /(^|[ \t])deb([ \t]|$)/ || comps !~ /(^|[ \t])main([ \t]|$)/) return
            n = split(suites, s, /[ \t]+/)
            for (i = 1; i <= n; i++) if (release(s[i])) { split(uris, u, /[ \t]+/); print u[1]; exit }
        }
        FNR == 1 {
            if (deb822) consider(types, uris, suites, comps)
            deb822 = (FILENAME ~ /\.sources$/); types = uris = suites = comps = ""
        }
        /^[ \t]*#/ { next }
        !deb822 && $1 == "deb" {
            line = $0; sub(/\[[^]]*\]/, "", line); split(line, w, /[ \t]+/)
            rest = ""; for (i = 4; i in w; i++) rest = rest " " w[i]
            consider("deb", w[2], w[3], rest); next
        }
        deb822 && /^[ \t]*$/ { consider(types, uris, suites, comps); types = uris = suites = comps = ""; next }
        deb822 && tolower($1) == "types:" { types = substr($0, index($0, ":") + 1) }
        deb822 && tolower($1) == "uris:" { uris = substr($0, index($0, ":") + 1); sub(/^[ \t]+/, "", uris) }
        deb822 && tolower($1) == "suites:" { suites = substr($0, index($0, ":") + 1) }
        deb822 && tolower($1) == "components:" { comps = substr($0, index($0, ":") + 1) }
        END { if (deb822) consider(types, uris, suites, comps) }
    ' "${files[@]}" | head -n 1 | sed 's:/*$::' | grep .
}
