package importers

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
)

// The CMS SMA directory is published as a workbook. We read cell text from
// its sheets with archive/zip and encoding/xml rather than link a spreadsheet
// library into the agent for one list: cells, shared strings and inline
// strings are all a directory needs, and the reader is fuzzed like every
// other parser of outside input.

// xlsxPartLimit bounds one decompressed part (zip bombs).
const xlsxPartLimit = 64 << 20

func parseXLSX(ctx context.Context, data []byte, progress Progress) (*List, error) {
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, fmt.Errorf("%w: not a readable XLSX (zip): %v", ErrMalformed, err)
	}
	var shared []string
	var sheets []*zip.File
	for _, f := range zr.File {
		switch {
		case f.Name == "xl/sharedStrings.xml":
			b, err := readPart(f)
			if err != nil {
				return nil, err
			}
			if shared, err = parseSharedStrings(b); err != nil {
				return nil, err
			}
		case strings.HasPrefix(f.Name, "xl/worksheets/") && strings.HasSuffix(f.Name, ".xml") && !strings.Contains(f.Name[len("xl/worksheets/"):], "/"):
			sheets = append(sheets, f)
		}
	}
	if len(sheets) == 0 {
		return nil, fmt.Errorf("%w: the workbook has no worksheets", ErrMalformed)
	}
	sort.Slice(sheets, func(i, j int) bool { return sheets[i].Name < sheets[j].Name })
	for _, f := range sheets {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		b, err := readPart(f)
		if err != nil {
			return nil, err
		}
		recs, err := parseSheet(b, shared)
		if err != nil {
			return nil, err
		}
		for i := 0; i < len(recs) && i < 5; i++ {
			if _, ok := findSMAColumns(normHeader(recs[i].fields)); ok {
				l := &List{Format: FormatSMA}
				parseSMA(l, recs, progress)
				l.Notes = append(l.Notes, "read from worksheet "+strings.TrimPrefix(f.Name, "xl/worksheets/"))
				return l, nil
			}
		}
	}
	return nil, fmt.Errorf("%w: no worksheet of this workbook is a list we know (looked for the CMS SMA directory's columns)", ErrUnknownFormat)
}

func readPart(f *zip.File) ([]byte, error) {
	rc, err := f.Open()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, f.Name, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, xlsxPartLimit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, f.Name, err)
	}
	if len(b) > xlsxPartLimit {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrMalformed, f.Name, xlsxPartLimit)
	}
	return b, nil
}

// parseSharedStrings reads <sst><si><t>…</t></si> and rich-text
// <si><r><t>…</t></r>…</si> into plain strings.
func parseSharedStrings(b []byte) ([]string, error) {
	dec := xml.NewDecoder(bytes.NewReader(b))
	var out []string
	var cur strings.Builder
	inSI, inT, inPhonetic := false, false, false
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%w: sharedStrings.xml: %v", ErrMalformed, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			switch t.Name.Local {
			case "si":
				inSI = true
				cur.Reset()
			case "t":
				inT = true
			case "rPh":
				inPhonetic = true
			}
		case xml.EndElement:
			switch t.Name.Local {
			case "si":
				inSI = false
				out = append(out, cur.String())
			case "t":
				inT = false
			case "rPh":
				inPhonetic = false
			}
		case xml.CharData:
			if inSI && inT && !inPhonetic {
				cur.Write(t)
			}
		}
	}
}

// parseSheet reads a worksheet's rows as records, placing each cell at its
// column (cells may be omitted) and numbering records by spreadsheet row.
func parseSheet(b []byte, shared []string) ([]csvRecord, error) {
	dec := xml.NewDecoder(bytes.NewReader(b))
	var recs []csvRecord
	var row *csvRecord
	var (
		cellCol  int
		cellType string
		val      strings.Builder
		inV      bool
		inIS     bool
	)
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return recs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%w: worksheet: %v", ErrMalformed, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			switch t.Name.Local {
			case "row":
				n := len(recs) + 1
				if r := attr(t, "r"); r != "" {
					if v, err := strconv.Atoi(r); err == nil && v > 0 && v < 1<<20 {
						n = v
					}
				}
				recs = append(recs, csvRecord{line: n})
				row = &recs[len(recs)-1]
			case "c":
				cellType = attr(t, "t")
				cellCol = colIndex(attr(t, "r"))
				if cellCol < 0 && row != nil {
					cellCol = len(row.fields)
				}
				val.Reset()
			case "v":
				inV = true
			case "is":
				inIS = true
			}
		case xml.EndElement:
			switch t.Name.Local {
			case "v":
				inV = false
			case "is":
				inIS = false
			case "c":
				if row == nil || cellCol < 0 || cellCol > 16384 {
					continue
				}
				s := val.String()
				if cellType == "s" {
					i, err := strconv.Atoi(strings.TrimSpace(s))
					if err != nil || i < 0 || i >= len(shared) {
						s = ""
					} else {
						s = shared[i]
					}
				}
				for len(row.fields) <= cellCol {
					row.fields = append(row.fields, "")
				}
				row.fields[cellCol] = s
			}
		case xml.CharData:
			if inV || inIS {
				val.Write(t)
			}
		}
	}
}

func attr(t xml.StartElement, name string) string {
	for _, a := range t.Attr {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

// colIndex turns "AB12" into 27 (0-based), or -1.
func colIndex(ref string) int {
	n := 0
	i := 0
	for ; i < len(ref) && i < 4; i++ {
		c := ref[i]
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		if c < 'A' || c > 'Z' {
			break
		}
		n = n*26 + int(c-'A'+1)
	}
	if i == 0 {
		return -1
	}
	return n - 1
}
