package synth

const (
	loinc  = "http://loinc.org"
	snomed = "http://snomed.info/sct"
	rxnorm = "http://www.nlm.nih.gov/research/umls/rxnorm"
	cvx    = "http://hl7.org/fhir/sid/cvx"
	ucum   = "http://unitsofmeasure.org"
)

// code is one coded concept with its pre-rendered JSON coding.
type code struct {
	system, code, display string
	unit                  string  // UCUM unit for quantities
	lo, hi                float64 // value range for quantities
	extra                 string  // type-specific (allergy category)
	sys                   string  // "system|code", what search matches
	coding                []byte  // {"system":..,"code":..,"display":..}
	concept               []byte  // {"coding":[coding],"text":display}
}

func mk(system, c, display string) code {
	return code{system: system, code: c, display: display}
}

func q(system, c, display, unit string, lo, hi float64) code {
	return code{system: system, code: c, display: display, unit: unit, lo: lo, hi: hi}
}

var (
	encounterTypes = []code{
		mk(snomed, "185349003", "Encounter for check up"),
		mk(snomed, "185345009", "Encounter for symptom"),
		mk(snomed, "162673000", "General examination of patient"),
		mk(snomed, "390906007", "Follow-up encounter"),
		mk(snomed, "50849002", "Emergency room admission"),
		mk(snomed, "698314001", "Consultation for treatment"),
	}
	conditions = []code{
		mk(snomed, "44054006", "Diabetes mellitus type 2"),
		mk(snomed, "38341003", "Hypertensive disorder"),
		mk(snomed, "195967001", "Asthma"),
		mk(snomed, "55822004", "Hyperlipidemia"),
		mk(snomed, "40055000", "Chronic sinusitis"),
		mk(snomed, "10509002", "Acute bronchitis"),
		mk(snomed, "444814009", "Viral sinusitis"),
		mk(snomed, "35489007", "Depressive disorder"),
		mk(snomed, "162864005", "Body mass index 30+ - obesity"),
		mk(snomed, "68496003", "Polyp of colon"),
		mk(snomed, "230690007", "Cerebrovascular accident"),
		mk(snomed, "49436004", "Atrial fibrillation"),
	}
	vitals = []code{
		q(loinc, "8867-4", "Heart rate", "/min", 55, 110),
		q(loinc, "9279-1", "Respiratory rate", "/min", 12, 22),
		q(loinc, "8310-5", "Body temperature", "Cel", 36.1, 38.4),
		q(loinc, "29463-7", "Body weight", "kg", 45, 120),
		q(loinc, "8302-2", "Body height", "cm", 150, 195),
		q(loinc, "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 90, 100),
		q(loinc, "39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 18, 38),
		q(loinc, "85354-9", "Blood pressure panel with all children optional", "mm[Hg]", 0, 0),
	}
	labs = []code{
		q(loinc, "2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 65, 180),
		q(loinc, "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.6),
		q(loinc, "718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 11, 17.5),
		q(loinc, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.5, 9.5),
		q(loinc, "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 140, 280),
		q(loinc, "6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 3.5, 12),
		q(loinc, "2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 133, 147),
		q(loinc, "2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.3, 5.3),
		q(loinc, "777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 140, 420),
	}
	medications = []code{
		mk(rxnorm, "860975", "metformin hydrochloride 500 MG Oral Tablet"),
		mk(rxnorm, "314076", "lisinopril 10 MG Oral Tablet"),
		mk(rxnorm, "617312", "atorvastatin 10 MG Oral Tablet"),
		mk(rxnorm, "895994", "fluticasone propionate 0.044 MG/ACTUAT Inhaler"),
		mk(rxnorm, "308136", "amlodipine 2.5 MG Oral Tablet"),
		mk(rxnorm, "198405", "ibuprofen 200 MG Oral Tablet"),
		mk(rxnorm, "308182", "amoxicillin 250 MG Oral Capsule"),
		mk(rxnorm, "312961", "simvastatin 20 MG Oral Tablet"),
		mk(rxnorm, "966222", "levothyroxine sodium 0.075 MG Oral Tablet"),
		mk(rxnorm, "1049221", "acetaminophen 325 MG / oxycodone hydrochloride 5 MG Oral Tablet"),
	}
	allergies = []code{
		{system: snomed, code: "91936005", display: "Allergy to penicillin", extra: "medication"},
		{system: snomed, code: "91935009", display: "Allergy to peanuts", extra: "food"},
		{system: snomed, code: "300913006", display: "Shellfish allergy", extra: "food"},
		{system: snomed, code: "232350006", display: "House dust mite allergy", extra: "environment"},
		{system: snomed, code: "419474003", display: "Allergy to mould", extra: "environment"},
		{system: snomed, code: "294505008", display: "Allergy to sulfonamides", extra: "medication"},
	}
	vaccines = []code{
		mk(cvx, "140", "Influenza, seasonal, injectable, preservative free"),
		mk(cvx, "208", "SARS-COV-2 (COVID-19) vaccine, mRNA, spike protein, LNP, preservative free, 30 mcg/0.3mL dose"),
		mk(cvx, "113", "Td (adult) preservative free"),
		mk(cvx, "133", "Pneumococcal conjugate PCV 13"),
		mk(cvx, "43", "Hep B, adult"),
		mk(cvx, "121", "zoster vaccine, live"),
	}
	procedures = []code{
		mk(snomed, "73761001", "Colonoscopy"),
		mk(snomed, "430193006", "Medication Reconciliation (procedure)"),
		mk(snomed, "710824005", "Assessment of health and social care needs"),
		mk(snomed, "171207006", "Depression screening"),
		mk(snomed, "268556000", "Urine screening test for diabetes"),
		mk(snomed, "428191000124101", "Documentation of current medications"),
		mk(snomed, "76601001", "Intramuscular injection"),
	}
	panels = []code{
		mk(loinc, "24323-8", "Comprehensive metabolic 2000 panel - Serum or Plasma"),
		mk(loinc, "58410-2", "CBC panel - Blood by Automated count"),
		mk(loinc, "57698-3", "Lipid panel with direct LDL - Serum or Plasma"),
		mk(loinc, "51990-0", "Basic metabolic panel - Blood"),
		mk(loinc, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood"),
	}
	docTypes = []code{
		mk(loinc, "11506-3", "Progress note"),
		mk(loinc, "34117-2", "History and physical note"),
		mk(loinc, "18842-5", "Discharge summary"),
		mk(loinc, "11488-4", "Consult note"),
	}
	givenNames  = []string{"James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Carlos", "Maria", "Wei", "Aisha", "Dmitri", "Priya"}
	familyNames = []string{"Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez", "Hernandez", "Lopez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Chen", "Patel", "Nguyen", "Okafor"}
	cities      = []struct{ city, state, zip string }{{"Boston", "MA", "02118"}, {"Springfield", "IL", "62701"}, {"Madison", "WI", "53703"}, {"Austin", "TX", "78701"}, {"Portland", "OR", "97205"}, {"Raleigh", "NC", "27601"}, {"Denver", "CO", "80202"}, {"Columbus", "OH", "43215"}}
	streets     = []string{"Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Elm St", "Washington Blvd", "Lake Rd", "Hillcrest Way"}
	orgNames    = []string{"Sandbox General Hospital", "Riverside Family Medicine", "Northside Pediatrics", "Lakeview Cardiology", "Summit Internal Medicine", "Acme Health Plan", "Medicare", "Blue Harbor Insurance"}
	specialties = []string{"Family Medicine", "Internal Medicine", "Cardiology", "Pediatrics", "Endocrinology"}
)

func init() {
	for _, tab := range [][]code{encounterTypes, conditions, vitals, labs, medications, allergies, vaccines, procedures, panels, docTypes} {
		for i := range tab {
			c := &tab[i]
			c.sys = c.system + "|" + c.code
			b := append([]byte(nil), `{"system":`...)
			b = appendString(b, c.system)
			b = append(b, `,"code":`...)
			b = appendString(b, c.code)
			b = append(b, `,"display":`...)
			b = appendString(b, c.display)
			b = append(b, '}')
			c.coding = b
			cc := append([]byte(`{"coding":[`), b...)
			cc = append(cc, `],"text":`...)
			cc = appendString(cc, c.display)
			cc = append(cc, '}')
			c.concept = cc
		}
	}
}
