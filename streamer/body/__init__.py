"""Body models behind one interface (`BodyModel`), and the MHR-70 keypoint layout."""
