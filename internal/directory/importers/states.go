package importers

import (
	"strconv"
	"strings"
)

var stateNames = map[string]string{
	"alabama": "AL", "alaska": "AK", "arizona": "AZ", "arkansas": "AR", "california": "CA",
	"colorado": "CO", "connecticut": "CT", "delaware": "DE", "district of columbia": "DC",
	"florida": "FL", "georgia": "GA", "hawaii": "HI", "idaho": "ID", "illinois": "IL",
	"indiana": "IN", "iowa": "IA", "kansas": "KS", "kentucky": "KY", "louisiana": "LA",
	"maine": "ME", "maryland": "MD", "massachusetts": "MA", "michigan": "MI", "minnesota": "MN",
	"mississippi": "MS", "missouri": "MO", "montana": "MT", "nebraska": "NE", "nevada": "NV",
	"new hampshire": "NH", "new jersey": "NJ", "new mexico": "NM", "new york": "NY",
	"north carolina": "NC", "north dakota": "ND", "ohio": "OH", "oklahoma": "OK", "oregon": "OR",
	"pennsylvania": "PA", "rhode island": "RI", "south carolina": "SC", "south dakota": "SD",
	"tennessee": "TN", "texas": "TX", "utah": "UT", "vermont": "VT", "virginia": "VA",
	"washington": "WA", "west virginia": "WV", "wisconsin": "WI", "wyoming": "WY",
	"puerto rico": "PR", "guam": "GU", "virgin islands": "VI", "us virgin islands": "VI",
	"american samoa": "AS", "northern mariana islands": "MP", "washington dc": "DC",
}

var stateCodes = func() map[string]bool {
	m := map[string]bool{}
	for _, c := range stateNames {
		m[c] = true
	}
	return m
}()

// StateCode returns the two-letter USPS code of a state given by name or
// code ("Missouri", "mo", "MO"), or "".
func StateCode(s string) string {
	s = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "."))
	if len(s) == 2 {
		if c := strings.ToUpper(s); stateCodes[c] {
			return c
		}
		return ""
	}
	return stateNames[strings.ToLower(cleanText(s))]
}

// zip3 ranges: the first three digits of a ZIP code name the state (USPS
// sectional centers). A handful of prefixes cross state lines; the table
// follows the majority.
var zip3 = []struct {
	lo, hi int
	st     string
}{
	{5, 5, "NY"}, {6, 7, "PR"}, {8, 8, "VI"}, {9, 9, "PR"}, {10, 27, "MA"}, {28, 29, "RI"},
	{30, 38, "NH"}, {39, 49, "ME"}, {50, 59, "VT"}, {60, 69, "CT"}, {70, 89, "NJ"},
	{100, 149, "NY"}, {150, 196, "PA"}, {197, 199, "DE"}, {200, 200, "DC"}, {201, 201, "VA"},
	{202, 205, "DC"}, {206, 219, "MD"}, {220, 246, "VA"}, {247, 268, "WV"}, {270, 289, "NC"},
	{290, 299, "SC"}, {300, 319, "GA"}, {320, 339, "FL"}, {341, 342, "FL"}, {344, 344, "FL"},
	{346, 347, "FL"}, {349, 349, "FL"}, {350, 369, "AL"}, {370, 385, "TN"}, {386, 397, "MS"},
	{398, 399, "GA"}, {400, 427, "KY"}, {430, 459, "OH"}, {460, 479, "IN"}, {480, 499, "MI"},
	{500, 528, "IA"}, {530, 549, "WI"}, {550, 567, "MN"}, {569, 569, "DC"}, {570, 577, "SD"},
	{580, 588, "ND"}, {590, 599, "MT"}, {600, 629, "IL"}, {630, 658, "MO"}, {660, 679, "KS"},
	{680, 693, "NE"}, {700, 714, "LA"}, {716, 729, "AR"}, {730, 749, "OK"}, {750, 799, "TX"},
	{800, 816, "CO"}, {820, 831, "WY"}, {832, 838, "ID"}, {840, 847, "UT"}, {850, 865, "AZ"},
	{870, 884, "NM"}, {885, 885, "TX"}, {889, 898, "NV"}, {900, 961, "CA"}, {967, 968, "HI"},
	{969, 969, "GU"}, {970, 979, "OR"}, {980, 994, "WA"}, {995, 999, "AK"},
}

// StateFromZIP returns the state a US ZIP code belongs to, or "".
func StateFromZIP(zip string) string {
	zip = strings.TrimSpace(zip)
	if len(zip) < 5 || !isDigits(zip[:5]) {
		return ""
	}
	n, _ := strconv.Atoi(zip[:3])
	for _, r := range zip3 {
		if n >= r.lo && n <= r.hi {
			return r.st
		}
	}
	return ""
}
