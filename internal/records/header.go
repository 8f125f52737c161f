package records

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"time"

	"github.com/medrelay/medrelay/internal/errdefs"
)

// ErrMalformed is returned (wrapped, with what is wrong) for a resource whose
// JSON is broken or that lacks what the store keys it by.
var ErrMalformed = errdefs.Define(errdefs.InvalidArgument, "RECORD_MALFORMED", "malformed resource")

// Header is what the store reads of a resource: its identity and version.
// Nothing else of the resource is parsed.
type Header struct {
	Type      string
	ID        string
	VersionID string
	// LastUpdated is meta.lastUpdated; zero when absent or not a valid
	// instant (the store then never treats the resource as stale).
	LastUpdated time.Time
}

// Limits of what ScanHeader accepts.
const (
	maxDepth      = 256 // nesting; FHIR resources go a dozen levels deep
	maxTypeLen    = 64
	maxIDLen      = 64 // FHIR id: [A-Za-z0-9\-\.]{1,64}
	maxVersionLen = 256
)

// ScanHeader reads resourceType, id, meta.versionId and meta.lastUpdated from
// one resource's JSON without building the resource: a single pass over the
// bytes that checks the JSON is well formed (so a line cut in the middle is
// caught) and copies out only those four strings. Keys may come in any order.
func ScanHeader(b []byte) (Header, error) {
	s := scanner{b: b}
	h, err := s.resource()
	if err != nil {
		return Header{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return h, nil
}

type scanner struct {
	b []byte
	i int
}

// errSyntax marks JSON that is not well formed (as opposed to JSON that is
// fine but not a resource the store can key).
var errSyntax = errors.New("invalid JSON")

var (
	errEnd   = fmt.Errorf("%w: unexpected end", errSyntax)
	errDepth = errors.New("JSON nested too deeply")
)

func (s *scanner) errorf(format string, a ...any) error {
	return fmt.Errorf("%w at byte %d: %s", errSyntax, s.i, fmt.Sprintf(format, a...))
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// peek returns the next non-space byte without consuming it.
func (s *scanner) peek() (byte, error) {
	s.ws()
	if s.i >= len(s.b) {
		return 0, errEnd
	}
	return s.b[s.i], nil
}

func (s *scanner) expect(c byte) error {
	got, err := s.peek()
	if err != nil {
		return err
	}
	if got != c {
		return s.errorf("want %q, found %q", c, got)
	}
	s.i++
	return nil
}

func (s *scanner) resource() (Header, error) {
	var h Header
	s.skipBOM()
	c, err := s.peek()
	if err != nil {
		return h, err
	}
	if c != '{' {
		return h, errors.New("not a JSON object")
	}
	s.i++
	var sawType, sawID, sawMeta bool
	err = s.members(func(key []byte, esc bool) error {
		switch keyName(key, esc) {
		case "resourceType":
			if sawType {
				return errors.New("resourceType given twice")
			}
			sawType = true
			v, err := s.stringValue("resourceType")
			if err != nil {
				return err
			}
			h.Type = v
			return nil
		case "id":
			if sawID {
				return errors.New("id given twice")
			}
			sawID = true
			v, err := s.stringValue("id")
			if err != nil {
				return err
			}
			h.ID = v
			return nil
		case "meta":
			if sawMeta {
				return errors.New("meta given twice")
			}
			sawMeta = true
			return s.meta(&h)
		}
		return s.skipValue(1)
	})
	if err != nil {
		return Header{}, err
	}
	s.ws()
	if s.i != len(s.b) {
		return Header{}, s.errorf("text after the resource")
	}
	if !sawType {
		return Header{}, errors.New("no resourceType")
	}
	if !ValidType(h.Type) {
		return Header{}, fmt.Errorf("resourceType %q is not a FHIR resource type name", clip(h.Type))
	}
	if !sawID {
		return Header{}, fmt.Errorf("%s has no id", h.Type)
	}
	if !ValidID(h.ID) {
		return Header{}, fmt.Errorf("%s id %q is not a FHIR id ([A-Za-z0-9-.]{1,64})", h.Type, clip(h.ID))
	}
	return h, nil
}

func (s *scanner) skipBOM() {
	if len(s.b) >= 3 && s.b[0] == 0xEF && s.b[1] == 0xBB && s.b[2] == 0xBF {
		s.i = 3
	}
}

// members walks an object whose '{' was consumed, calling fn with each key;
// fn must consume the value.
func (s *scanner) members(fn func(key []byte, esc bool) error) error {
	c, err := s.peek()
	if err != nil {
		return err
	}
	if c == '}' {
		s.i++
		return nil
	}
	for {
		if c, err = s.peek(); err != nil {
			return err
		}
		if c != '"' {
			return s.errorf("want a key, found %q", c)
		}
		key, esc, err := s.str()
		if err != nil {
			return err
		}
		if err := s.expect(':'); err != nil {
			return err
		}
		if _, err := s.peek(); err != nil {
			return err
		}
		if err := fn(key, esc); err != nil {
			return err
		}
		if c, err = s.peek(); err != nil {
			return err
		}
		s.i++
		switch c {
		case ',':
		case '}':
			return nil
		default:
			s.i--
			return s.errorf("want ',' or '}', found %q", c)
		}
	}
}

func (s *scanner) meta(h *Header) error {
	if c, _ := s.peek(); c != '{' {
		return s.skipNonObject("meta")
	}
	s.i++
	var sawVersion, sawUpdated bool
	return s.members(func(key []byte, esc bool) error {
		switch keyName(key, esc) {
		case "versionId":
			if sawVersion {
				return errors.New("meta.versionId given twice")
			}
			sawVersion = true
			v, err := s.stringValue("meta.versionId")
			if err != nil {
				return err
			}
			if len(v) > maxVersionLen {
				return errors.New("meta.versionId is too long")
			}
			h.VersionID = v
			return nil
		case "lastUpdated":
			if sawUpdated {
				return errors.New("meta.lastUpdated given twice")
			}
			sawUpdated = true
			v, err := s.stringValue("meta.lastUpdated")
			if err != nil {
				return err
			}
			h.LastUpdated = parseInstant(v)
			return nil
		}
		return s.skipValue(2)
	})
}

func (s *scanner) skipNonObject(field string) error {
	return fmt.Errorf("%s is not a JSON object", field)
}

// keyName returns the key as a string only for the few keys we look for;
// everything else maps to "" without allocating.
func keyName(key []byte, esc bool) string {
	if esc {
		var k string
		if err := json.Unmarshal(quoteRaw(key), &k); err != nil {
			return ""
		}
		return k
	}
	switch string(key) { // no allocation: the compiler compares in place
	case "resourceType":
		return "resourceType"
	case "id":
		return "id"
	case "meta":
		return "meta"
	case "versionId":
		return "versionId"
	case "lastUpdated":
		return "lastUpdated"
	}
	return ""
}

// stringValue reads a JSON string value and returns it unescaped.
func (s *scanner) stringValue(field string) (string, error) {
	c, err := s.peek()
	if err != nil {
		return "", err
	}
	if c != '"' {
		return "", fmt.Errorf("%s is not a string", field)
	}
	raw, esc, err := s.str()
	if err != nil {
		return "", err
	}
	if !esc {
		return string(raw), nil
	}
	var v string
	if err := json.Unmarshal(quoteRaw(raw), &v); err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	return v, nil
}

func quoteRaw(raw []byte) []byte {
	q := make([]byte, 0, len(raw)+2)
	q = append(q, '"')
	q = append(q, raw...)
	return append(q, '"')
}

// strSpecial marks the bytes that end the fast path inside a string.
var strSpecial = func() (t [256]bool) {
	for c := 0; c < 0x20; c++ {
		t[c] = true
	}
	t['"'] = true
	t['\\'] = true
	return t
}()

// str consumes a string (at its opening quote) and returns its raw contents
// and whether they contain escapes.
func (s *scanner) str() ([]byte, bool, error) {
	s.i++ // opening quote
	start := s.i
	esc := false
	b := s.b
	for {
		i := strPlain(b, s.i)
		s.i = i
		if i >= len(b) {
			return nil, false, errEnd
		}
		switch c := b[i]; {
		case c == '"':
			s.i++
			return b[start:i], esc, nil
		case c == '\\':
			esc = true
			if i+1 >= len(b) {
				return nil, false, errEnd
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i = i + 2
			case 'u':
				if i+6 > len(b) {
					return nil, false, errEnd
				}
				for _, h := range b[i+2 : i+6] {
					if !isHex(h) {
						return nil, false, s.errorf("bad \\u escape")
					}
				}
				s.i = i + 6
			default:
				return nil, false, s.errorf("bad escape \\%c", b[i+1])
			}
		default:
			return nil, false, s.errorf("control character in string")
		}
	}
}

// strPlain returns the index of the first byte at or after i that ends the
// fast path inside a string (a quote, a backslash or a control character),
// or len(b). Strings are most of a resource's bytes, so it looks at eight
// bytes at a time: in each 64-bit word, a byte's high bit is set in
// hasZero(x) when that byte of x is zero, and the lowest such bit is exact
// (borrows only run upwards from a byte that matched).
func strPlain(b []byte, i int) int {
	const (
		ones   = 0x0101010101010101
		highs  = 0x8080808080808080
		quotes = '"' * ones
		slashs = '\\' * ones
	)
	for ; i+8 <= len(b); i += 8 {
		x := binary.LittleEndian.Uint64(b[i:])
		q, e := x^quotes, x^slashs
		m := (q-ones)&^q | (e-ones)&^e | (x-0x20*ones)&^x
		if m &= highs; m != 0 {
			return i + bits.TrailingZeros64(m)>>3
		}
	}
	for i < len(b) && !strSpecial[b[i]] {
		i++
	}
	return i
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// skipValue consumes any JSON value, checking its syntax.
func (s *scanner) skipValue(depth int) error {
	c, err := s.peek()
	if err != nil {
		return err
	}
	switch {
	case c == '"':
		_, _, err := s.str()
		return err
	case c == '{':
		if depth >= maxDepth {
			return errDepth
		}
		s.i++
		return s.skipObject(depth)
	case c == '[':
		if depth >= maxDepth {
			return errDepth
		}
		s.i++
		if c, err = s.peek(); err != nil {
			return err
		}
		if c == ']' {
			s.i++
			return nil
		}
		for {
			if err := s.skipValue(depth + 1); err != nil {
				return err
			}
			if c, err = s.peek(); err != nil {
				return err
			}
			s.i++
			switch c {
			case ',':
			case ']':
				return nil
			default:
				s.i--
				return s.errorf("want ',' or ']', found %q", c)
			}
		}
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || c >= '0' && c <= '9':
		return s.number()
	}
	return s.errorf("unexpected %q", c)
}

// skipObject consumes an object's members after its '{' (no callback, so
// no closure is allocated per nested object).
func (s *scanner) skipObject(depth int) error {
	c, err := s.peek()
	if err != nil {
		return err
	}
	if c == '}' {
		s.i++
		return nil
	}
	for {
		if c, err = s.peek(); err != nil {
			return err
		}
		if c != '"' {
			return s.errorf("want a key, found %q", c)
		}
		if _, _, err := s.str(); err != nil {
			return err
		}
		if err := s.expect(':'); err != nil {
			return err
		}
		if err := s.skipValue(depth + 1); err != nil {
			return err
		}
		if c, err = s.peek(); err != nil {
			return err
		}
		s.i++
		switch c {
		case ',':
		case '}':
			return nil
		default:
			s.i--
			return s.errorf("want ',' or '}', found %q", c)
		}
	}
}

func (s *scanner) literal(lit string) error {
	if len(s.b)-s.i < len(lit) {
		return errEnd
	}
	if string(s.b[s.i:s.i+len(lit)]) != lit {
		return s.errorf("bad literal")
	}
	s.i += len(lit)
	return nil
}

// number consumes a JSON number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() error {
	b, i := s.b, s.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return errEnd
	case b[i] == '0':
		i++
	case b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		s.i = i
		return s.errorf("bad number")
	}
	if i < len(b) && b[i] == '.' {
		i++
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			s.i = i
			return s.errorf("bad number")
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			s.i = i
			return s.errorf("bad number")
		}
	}
	s.i = i
	return nil
}

// parseInstant reads a FHIR instant; anything else is "unknown" (zero).
func parseInstant(v string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil || t.Year() < 1700 || t.Year() > 2200 {
		// Outside what UnixNano represents: treat as unknown.
		return time.Time{}
	}
	return t.UTC()
}

// ValidType reports whether t is a well-formed FHIR resource type name
// ([A-Z][A-Za-z]*).
func ValidType(t string) bool {
	if len(t) == 0 || len(t) > maxTypeLen || t[0] < 'A' || t[0] > 'Z' {
		return false
	}
	for i := 1; i < len(t); i++ {
		c := t[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}

// ValidID reports whether id is a FHIR logical id.
func ValidID(id string) bool {
	if len(id) == 0 || len(id) > maxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// clip shortens a value quoted in an error.
func clip(v string) string {
	if len(v) > 80 {
		return v[:80] + "…"
	}
	return v
}
