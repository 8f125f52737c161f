// Package proto_test checks that the generated Go code in proto/gen matches
// the .proto files beside it: each .proto is compiled here (protocompile, no
// external tools) and its descriptor compared with the one embedded in the
// generated package. Editing a .proto without `make proto` fails `make test`.
// `make check` additionally regenerates with the pinned generators and diffs.
package proto_test

import (
	"context"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bufbuild/protocompile"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoregistry"

	// Every generated package registers its files in the global registry.
	_ "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
	_ "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

func TestGeneratedCodeMatchesProtos(t *testing.T) {
	var files []string
	err := filepath.WalkDir("medrelay", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".proto") {
			files = append(files, filepath.ToSlash(p))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no .proto files found")
	}
	c := protocompile.Compiler{Resolver: protocompile.WithStandardImports(&protocompile.SourceResolver{ImportPaths: []string{"."}})}
	compiled, err := c.Compile(context.Background(), files...)
	if err != nil {
		t.Fatalf("compile protos: %v", err)
	}
	for _, f := range compiled {
		want := protodesc.ToFileDescriptorProto(f)
		want.SourceCodeInfo = nil
		gen, err := protoregistry.GlobalFiles.FindFileByPath(f.Path())
		if err != nil {
			t.Errorf("%s: no generated code registered (run `make proto`, and import its package in drift_test.go): %v", f.Path(), err)
			continue
		}
		got := protodesc.ToFileDescriptorProto(gen)
		got.SourceCodeInfo = nil
		if !proto.Equal(want, got) {
			t.Errorf("%s: proto/gen is out of date: run `make proto`", f.Path())
		}
	}
}
