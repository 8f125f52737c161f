//go:build !race

package directory

// raceDetector is true when the tests run under -race.
const raceDetector = false
