"""The service's request and response bodies (pydantic, for validation and ``/docs``) and the words of its refusals."""

from typing import List, Optional

from pydantic import BaseModel, Field

POLICY_DETAIL = {  # what a 422 of the input policy says: the check, never the statistic or the limit
    "shape": "the image does not have the accepted shape",
    "dtype": "the pixel values are not floating point numbers",
    "non_finite": "the image or the model's answer to it is not finite",
    "range": "a pixel value lies outside the accepted range",
    "variance": "the image's pixel statistics lie outside the accepted range",
    "energy": "the image's activation statistics lie outside the accepted range",
    "reconstruction": "the image does not resemble the inputs the policy was calibrated on",
}


class PredictRequest(BaseModel):
    image: List[List[float]] = Field(..., description="28 rows of 28 pixel values in [0, 1] (JSON numbers; NaN/Infinity refused)")


class PredictResponse(BaseModel):
    label: int
    probabilities: Optional[List[float]] = Field(
        None, description="softmax, rounded to output.precision; absent when output.probabilities is false"
    )


class ErrorResponse(BaseModel):
    error: str
    reason: str
    detail: str = ""


ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 408, 413, 422, 429, 503, 504)}
