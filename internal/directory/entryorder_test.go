package directory

import (
	"reflect"
	"testing"

	"github.com/medrelay/medrelay/internal/directory/importers"
)

// entryOrder writes every field of an entry by hand, so a field added to
// importers.Entry (or to a type it holds) could be left out of it: rows
// differing only there would tie, and the stable sort would fall back to
// the list's order, which the merge must not depend on. This walks the
// types by reflection: every field but Row changes the order key, Row
// (the position) does not, and a field of a kind the walk does not know
// fails the test until entryOrder and this walk learn it.
func TestEntryOrderReadsEveryField(t *testing.T) {
	var variants func(path string, typ reflect.Type) []reflect.Value
	variants = func(path string, typ reflect.Type) []reflect.Value {
		one := func(set func(v reflect.Value)) reflect.Value {
			v := reflect.New(typ).Elem()
			set(v)
			return v
		}
		switch typ.Kind() {
		case reflect.String:
			return []reflect.Value{one(func(v reflect.Value) { v.SetString("x") })}
		case reflect.Bool:
			return []reflect.Value{one(func(v reflect.Value) { v.SetBool(true) })}
		case reflect.Pointer:
			// Non-nil and pointing at zero, then at each variant.
			out := []reflect.Value{reflect.New(typ.Elem())}
			for _, x := range variants(path, typ.Elem()) {
				p := reflect.New(typ.Elem())
				p.Elem().Set(x)
				out = append(out, p)
			}
			return out
		case reflect.Slice:
			// One zero element, then one element of each variant.
			out := []reflect.Value{reflect.MakeSlice(typ, 1, 1)}
			for _, x := range variants(path+"[]", typ.Elem()) {
				s := reflect.MakeSlice(typ, 1, 1)
				s.Index(0).Set(x)
				out = append(out, s)
			}
			return out
		case reflect.Struct:
			var out []reflect.Value
			for i := range typ.NumField() {
				for _, x := range variants(path+"."+typ.Field(i).Name, typ.Field(i).Type) {
					v := reflect.New(typ).Elem()
					v.Field(i).Set(x)
					out = append(out, v)
				}
			}
			return out
		}
		t.Fatalf("%s: a field of kind %s: teach entryOrder (and this test) to read it", path, typ.Kind())
		return nil
	}
	typ := reflect.TypeFor[importers.Entry]()
	seen := map[string]string{entryOrder(importers.Entry{}): "the empty entry"}
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Name == "Row" {
			continue
		}
		for j, x := range variants("Entry."+f.Name, f.Type) {
			var e importers.Entry
			reflect.ValueOf(&e).Elem().Field(i).Set(x)
			what := f.Name + " variant " + string(rune('a'+j))
			k := entryOrder(e)
			if prev, ok := seen[k]; ok {
				t.Errorf("%s has the order key of %s (%q): entryOrder does not read it", what, prev, k)
			}
			seen[k] = what
		}
	}
	if len(seen) < 40 {
		t.Fatalf("only %d variants: the walk missed fields", len(seen))
	}
	// The position is not content.
	a := importers.Entry{Row: 1, Name: "Clinic"}
	b := importers.Entry{Row: 2, Name: "Clinic"}
	if entryOrder(a) != entryOrder(b) {
		t.Fatal("Row changes the order key: the merge would follow the list's order")
	}
}
