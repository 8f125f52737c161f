package synth

import "testing"

func BenchmarkAppendPatient(b *testing.B) {
	d := New(1, 100)
	buf := make([]byte, 0, 1<<20)
	var bytes int64
	c := d.NewCursor()
	for i := 0; i < b.N; i++ {
		p := i % 100
		for ty := Patient; ty < Practitioner; ty++ {
			for k := 0; k < d.Count(p, ty); k++ {
				buf = c.Append(buf[:0], Ref{Type: ty, Patient: p, K: k}, Meta{})
				bytes += int64(len(buf)) + 1
			}
		}
	}
	b.SetBytes(bytes / int64(b.N))
}
