#!/bin/sh
# RUSTC_WRAPPER for nightly fuzz builds. rustix 0.37 (under lapin 2.5's async-io 1) turns on
# nightly-only layout attributes when a probe with `#![feature(rustc_attrs)]` compiles, and
# current nightlies no longer have those attributes. Failing exactly that probe makes rustix
# take its stable path; every other compilation runs unchanged.
for arg; do
    if [ "$arg" = "-" ]; then
        input=$(cat)
        case "$input" in
            *"feature(rustc_attrs)"*) exit 1 ;;
        esac
        printf '%s\n' "$input" | "$@"
        exit $?
    fi
done
exec "$@"
