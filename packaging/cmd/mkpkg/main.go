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
	flag.Parse()
	paths, err := packaging.Build(packaging.Options{Root: ".", OutDir: *out, Version: os.Getenv("VERSION"), Arch: *arch})
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkpkg:", err)
		os.Exit(1)
	}
	for _, p := range paths {
		fmt.Println(p)
	}
}
