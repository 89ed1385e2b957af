// Package hivelib carries lib/hive.nix inside the nix-hive binary, so a
// plain hive.nix needs no NIX_PATH entry and no flake input to be evaluated.
// It must hold nothing but the embedded files.
package hivelib
