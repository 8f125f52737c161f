// The generic SMART source without a rate limit: the benchmark measures the
// plugin machinery, not a vendor's request budget.
package main

import "github.com/medrelay/medrelay/plugins/sdk"

func main() {
	sdk.Serve(&sdk.SMART{Name: "benchplugin", Vendor: "Bench", Version: "1", Profile: sdk.Profile{Bulk: true}})
}
