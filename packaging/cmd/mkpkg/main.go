// Command mkpkg builds the .deb and .rpm: go run ./packaging/cmd/mkpkg -out dist
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"

	"github.com/medrelay/medrelay/packaging"
)

func main() {
	out := flag.String("out", "dist", "output directory")
	arch := flag.String("arch", runtime.GOARCH, "package architecture")
	root := flag.String("root", ".", "repository root (nfpm.yaml's paths are relative to it)")
	bin := flag.String("bin", "", "directory of the binaries (default ROOT/bin)")
	version := flag.String("version", os.Getenv("VERSION"), "package version (default $VERSION)")
	flag.Parse()
	paths, err := packaging.Build(packaging.Options{Root: *root, BinDir: *bin, OutDir: *out, Version: *version, Arch: *arch})
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkpkg:", err)
		os.Exit(1)
	}
	for _, p := range paths {
		fmt.Println(p)
	}
}
